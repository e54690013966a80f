package config

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Watcher reloads a file when it changes (checked every interval, by size
// and modification time) and when Reload is called (SIGHUP). A change is
// loaded once two checks in a row see the same size and time, so a file
// caught half-written is not loaded, and an empty file is refused;
// writing a new file and renaming it over the old one avoids the wait. Requests that arrive during a load
// merge into one. A load that fails leaves the last good configuration in
// force; load says why and the watcher logs it.
type Watcher struct {
	path     string
	interval time.Duration
	load     func() error
	observe  func(ok bool)
	log      *slog.Logger
	trigger  chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
	started  bool
	last     os.FileInfo // as last loaded
	seen     os.FileInfo // changed, waiting to be seen again unchanged
}

// NewWatcher returns a watcher of path; observe, if set, is told of every
// reload's outcome.
func NewWatcher(path string, interval time.Duration, load func() error, observe func(ok bool), log *slog.Logger) *Watcher {
	w := &Watcher{path: path, interval: interval, load: load, observe: observe, log: log.With("file", path),
		trigger: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	w.last, _ = os.Stat(path)
	return w
}

// Path is the file watched.
func (w *Watcher) Path() string { return w.path }

// Reload asks for a reload; it does not wait for it.
func (w *Watcher) Reload() {
	select {
	case w.trigger <- struct{}{}:
	default: // one is pending already
	}
}

// Start starts the watch loop; it exits when Shutdown is called.
func (w *Watcher) Start(context.Context) error {
	w.started = true
	go func() {
		defer close(w.done)
		t := time.NewTicker(w.interval)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-w.trigger:
				w.reload("signal")
			case <-t.C:
				fi, err := os.Stat(w.path)
				if err != nil || same(fi, w.last) {
					w.seen = nil
					continue
				}
				if same(fi, w.seen) {
					w.reload("change")
					continue
				}
				w.seen = fi // changed: load when the next check sees it unchanged
			}
		}
	}()
	return nil
}

func same(a, b os.FileInfo) bool {
	return a != nil && b != nil && a.ModTime().Equal(b.ModTime()) && a.Size() == b.Size()
}

func (w *Watcher) reload(why string) {
	w.last, _ = os.Stat(w.path)
	w.seen = nil
	var err error
	if w.last != nil && w.last.Size() == 0 {
		// Far more likely a file caught half-written than an intent; a
		// file of comments still empties a configuration.
		err = errors.New("the file is empty")
	} else {
		err = w.load()
	}
	if w.observe != nil {
		w.observe(err == nil)
	}
	if err != nil {
		w.log.Error("reload failed; the previous configuration stays in force", "trigger", why, "err", err)
		return
	}
	w.log.Info("reloaded", "trigger", why)
}

// Shutdown stops the loop; calling it again is harmless.
func (w *Watcher) Shutdown(ctx context.Context) error {
	w.stopOnce.Do(func() { close(w.stop) })
	if !w.started {
		return nil
	}
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
