package config_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/aggd/aggd/internal/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The watcher runs on the bubble's clock: every sleep below advances it
// once the watcher is idle, so no assertion depends on the machine's speed.
func TestWatcherReloadsOnChangeAndOnRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval = 10 * time.Millisecond
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
		w := config.NewWatcher(path, interval, load, func(ok bool) {
			mu.Lock()
			outcomes = append(outcomes, ok)
			mu.Unlock()
		}, slog.New(slog.DiscardHandler))
		w.Start(context.Background())
		defer w.Shutdown(context.Background())
		// tick lets one check interval pass and the watcher act on it.
		tick := func() {
			time.Sleep(interval)
			synctest.Wait()
		}
		// waitLoad waits up to 100 checks for a load that read text, and
		// returns its outcome.
		waitLoad := func(text string, from int) (int, bool) {
			t.Helper()
			for range 100 {
				tick()
				mu.Lock()
				for i := from; i < len(loads); i++ {
					if loads[i] == text {
						ok := outcomes[i]
						mu.Unlock()
						return i + 1, ok
					}
				}
				mu.Unlock()
			}
			t.Fatalf("no load of %q", text)
			return 0, false
		}
		for range 5 {
			tick()
		}
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
		for range 100 {
			tick()
			mu.Lock()
			done := len(outcomes) > n
			mu.Unlock()
			if done {
				break
			}
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
	})
}
