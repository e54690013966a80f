package config_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aggd/aggd/internal/config"
)

func TestWatcherReloadsOnChangeAndOnRequest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.toml")
	os.WriteFile(path, []byte("a"), 0o600)
	var mu sync.Mutex
	var loads []string
	var outcomes []bool
	load := func() error {
		b, _ := os.ReadFile(path)
		mu.Lock()
		defer mu.Unlock()
		loads = append(loads, string(b))
		if string(b) == "broken" {
			return errors.New("broken")
		}
		return nil
	}
	w := config.NewWatcher(path, 10*time.Millisecond, load, func(ok bool) {
		mu.Lock()
		outcomes = append(outcomes, ok)
		mu.Unlock()
	}, slog.New(slog.DiscardHandler))
	w.Start(context.Background())
	defer w.Shutdown(context.Background())
	// waitLoad waits for a load that read text, and returns its outcome.
	waitLoad := func(text string, from int) (int, bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			for i := from; i < len(loads); i++ {
				if loads[i] == text {
					ok := outcomes[i]
					mu.Unlock()
					return i + 1, ok
				}
			}
			mu.Unlock()
			if time.Now().After(deadline) {
				t.Fatalf("no load of %q", text)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	if len(loads) != 0 {
		t.Fatalf("reloaded an unchanged file: %v", loads)
	}
	mu.Unlock()
	os.WriteFile(path, []byte("broken"), 0o600)
	next, ok := waitLoad("broken", 0)
	if ok {
		t.Fatal("a broken load succeeded")
	}
	w.Reload() // as SIGHUP does
	next, _ = waitLoad("broken", next)
	os.WriteFile(path, []byte("good and longer"), 0o600)
	if _, ok := waitLoad("good and longer", next); !ok {
		t.Fatal("the good load failed")
	}
	mu.Lock()
	n := len(outcomes)
	mu.Unlock()
	os.WriteFile(path, nil, 0o600) // empty: refused without calling load
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		done := len(outcomes) > n
		mu.Unlock()
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, l := range loads {
		if l == "" {
			t.Fatalf("an empty or half-written file was loaded: %q", loads)
		}
	}
	if outcomes[len(outcomes)-1] {
		t.Fatalf("the empty file's reload succeeded: %v", outcomes)
	}
}
