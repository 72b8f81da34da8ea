package test

import (
	"bufio"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestContainerdOOM: a task that outgrows `ctr run --memory-limit` is killed
// by the kernel; ctr run exits 137 and containerd receives the shim's
// /tasks/oom event for it before /tasks/exit, and /tasks/delete last.
func TestContainerdOOM(t *testing.T) {
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		events := exec.CommandContext(ctx, d.Version.Ctr, "--address", d.Addr, "events")
		stdout, err := events.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := events.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cancel(); _ = events.Wait() }()
		lines := make(chan string, 64)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		time.Sleep(300 * time.Millisecond) // let ctr events subscribe

		// dd's 256 MiB block buffer is touched as it is filled.
		d.Ctr(t, 137, d.RunArgs([]string{"--rm", "--memory-limit", "33554432"}, "hog",
			"/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1")...)
		var topics []string
		deadline := time.After(20 * time.Second)
	collect:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break collect
				}
				if !strings.Contains(l, "hog") {
					continue
				}
				for _, topic := range []string{"/tasks/oom", "/tasks/exit", "/tasks/delete"} {
					if strings.Contains(l, topic) {
						topics = append(topics, topic)
					}
				}
				if len(topics) > 0 && topics[len(topics)-1] == "/tasks/delete" {
					break collect
				}
			case <-deadline:
				break collect
			}
		}
		oom, exit := -1, -1
		for i, topic := range topics {
			if topic == "/tasks/oom" && oom < 0 {
				oom = i
			}
			if topic == "/tasks/exit" && exit < 0 {
				exit = i
			}
		}
		if oom < 0 || exit < 0 || oom > exit {
			t.Errorf("events of hog: %v; want /tasks/oom before /tasks/exit, then /tasks/delete", topics)
		} else if topics[len(topics)-1] != "/tasks/delete" {
			// The shim publishes /tasks/delete in Delete, and containerd
			// shuts it down right after: it must not exit before the
			// event is out (it did, 2 runs in 12 on a loaded machine).
			t.Errorf("events of hog %v end without /tasks/delete", topics)
		}
		ctrdAssertClean(t, d, "hog")
	})
}
