// Package runtime detects what the host allows (Detect) and runs containers on
// runc's libcontainer, in process: no runc binary is used.
package runtime
