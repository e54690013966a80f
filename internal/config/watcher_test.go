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
	wait := func(n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			got := len(loads)
			mu.Unlock()
			if got >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d loads, want %d", got, n)
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
	wait(1)
	w.Reload() // as SIGHUP does
	wait(2)
	os.WriteFile(path, []byte("good and longer"), 0o600)
	wait(3)
	mu.Lock()
	defer mu.Unlock()
	if loads[0] != "broken" || loads[2] != "good and longer" || outcomes[0] || !outcomes[2] {
		t.Fatalf("loads %q outcomes %v", loads, outcomes)
	}
}
