package main

import (
	"errors"
	"testing"
	"testing/synctest"

	rungroup "github.com/oklog/run"
)

// TestFailedServerStopsNothingElse runs a group whose HTTP server fails
// at once beside an actor that ends only when told: the group must keep
// running until that actor returns, and then stop the server too.
func TestFailedServerStopsNothingElse(t *testing.T) {
	synctest.Test(t, testFailedServerStopsNothingElse)
}

func testFailedServerStopsNothingElse(t *testing.T) {
	var g rungroup.Group
	failed := make(chan error, 1)
	stopped := make(chan struct{})
	g.Add(servesUntilStopped(func() error { return errors.New("listen: address in use") },
		func(err error) { failed <- err }, func() { close(stopped) }))
	finish := make(chan struct{})
	g.Add(func() error { <-finish; return nil }, func(error) {})
	ran := make(chan error, 1)
	go func() { ran <- g.Run() }()

	if err := <-failed; err == nil || err.Error() != "listen: address in use" {
		t.Fatalf("failure reported as %v", err)
	}
	synctest.Wait() // every goroutine of the group has done what it will
	select {
	case err := <-ran:
		t.Fatalf("the group ended when the server failed: %v", err)
	case <-stopped:
		t.Fatal("the server was stopped before the group was told to end")
	default:
	}
	close(finish)
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	select {
	case <-stopped:
	default:
		t.Fatal("the failed server's stop did not run")
	}
}
