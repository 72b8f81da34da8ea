package runtime

// PhaseHook, when set, is called as each phase of starting and running a
// container ends, with the phase's name: `PYISOLATE_TIMING=1 pyisolate run`
// prints where the time of a start goes (README, "Start latency"). It is
// set once, before any container is made, and costs nothing when nil.
var PhaseHook func(phase string)

// Phase reports the end of a phase to PhaseHook.
func Phase(name string) {
	if PhaseHook != nil {
		PhaseHook(name)
	}
}
