package journal_test

import (
	"log/slog"
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/journal"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/wal"
	"github.com/aggd/aggd/internal/window"
)

// replaySeeds are the requests whose records seed FuzzReplay: samples
// with and without timestamps (the second refused at arrival), two events
// (the first refused), a check and a span; and an empty request.
func replaySeeds() []*aggdv1.StreamRequest {
	return []*aggdv1.StreamRequest{
		{Sequence: 3, Batch: &aggdv1.Batch{
			Samples: []*aggdv1.Sample{
				{Name: "hits", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1, Tags: []string{"env:a"}, TimestampUnixNano: 1_699_999_990_000_000_000},
				{Name: "limited", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1},
				{Name: "lat", Type: aggdv1.MetricType_METRIC_TYPE_DISTRIBUTION, Values: []float64{0.5, 2}},
			},
			Events:        []*aggdv1.Event{{Title: "dropped"}, {Title: "kept", Text: "t"}},
			ServiceChecks: []*aggdv1.ServiceCheck{{Name: "up", Status: aggdv1.ServiceCheckStatus_SERVICE_CHECK_STATUS_OK}},
			Spans:         []*aggdv1.Span{{TraceId: []byte("0123456789abcdef"), SpanId: []byte("span0001"), Name: "GET", StartUnixNano: 1_699_999_999_000_000_000, DurationNano: 5}},
		}},
		{},
	}
}

type ingestNothing struct{}

func (ingestNothing) Ingest(*window.Batch) {}
func (ingestNothing) Resume(int64)         {}
func (ingestNothing) Drained() int64       { return 0 }

// FuzzReplay feeds write-ahead log records, real ones and whatever the
// fuzzer makes of them, to replay: a record it cannot read is an error,
// never a panic.
func FuzzReplay(f *testing.F) {
	tenants, err := service.NewTenants(service.TenantsConfig{MaxTenants: 1000})
	if err != nil {
		f.Fatal(err)
	}
	l, err := wal.Open(f.TempDir(), wal.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { l.Close() })
	j, err := journal.New(journal.Config{Log: l, Due: func(ts, now int64) int64 { return max(ts, now) + 10 }, SpanHold: time.Minute,
		Tenants: tenants, Limits: codec.DefaultLimits(), Ingest: ingestNothing{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	for _, r := range replaySeeds() {
		data, _ := proto.Marshal(r)
		f.Add(journal.AppendRecord(nil, journal.Record{Kind: journal.Stream, Tenant: "acme", Now: 1_700_000_000_000_000_000,
			Refused: []journal.Item{{Kind: aggdv1.ItemKind_ITEM_KIND_SAMPLE, Index: 1}, {Kind: aggdv1.ItemKind_ITEM_KIND_EVENT, Index: 0}},
			Frame:   data}), true, int64(1_700_000_000_000_000_000))
	}
	// A stream's record whose frame uses series references its
	// definitions declare.
	defs, _ := proto.Marshal(&aggdv1.Batch{Samples: []*aggdv1.Sample{{Name: "r", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Tags: []string{"a:1"}, SeriesRef: 3}}})
	byRef, _ := proto.Marshal(&aggdv1.StreamRequest{Sequence: 2, Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{{SeriesRef: 3, Value: 1}, {SeriesRef: 4, Value: 1}}}})
	f.Add(journal.AppendRecord(nil, journal.Record{Kind: journal.Stream, Tenant: "acme", Now: 1_700_000_000_000_000_000, Stream: 1 << 40, Defs: defs, Frame: byRef}),
		false, int64(0))
	f.Fuzz(func(t *testing.T, rec []byte, flushed bool, tick int64) {
		j.ReplayRecord(rec, flushed, tick)
	})
}

func TestRecordRoundTrip(t *testing.T) {
	for _, r := range []journal.Record{
		{Kind: journal.Stream, Tenant: "acme", Now: 1_700_000_000_000_000_000, Frame: []byte{0x08, 0x07}},
		{Kind: journal.Submit, Tenant: "", Now: 1, Refused: []journal.Item{{Kind: aggdv1.ItemKind_ITEM_KIND_SPAN, Index: 3}, {Kind: aggdv1.ItemKind_ITEM_KIND_EVENT, Index: 0}}, Frame: []byte{}},
		{Kind: journal.Stream, Tenant: "acme", Now: 2, Stream: 1<<40 | 7, Defs: []byte{0x0a, 0x02, 0x50, 0x03}, Frame: []byte{0x08, 0x01}},
		{Kind: journal.Stream, Tenant: "acme", Now: 1_700_000_009_000_000_000, Drained: 1_700_000_010_000_000_000, Frame: []byte{0x08, 0x01}},
	} {
		got, err := journal.ParseRecord(journal.AppendRecord(nil, r))
		if err != nil {
			t.Fatalf("%+v: %v", r, err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("got %+v, want %+v", got, r)
		}
	}
	// A record of version 1, before streams and definitions, still reads.
	v1 := []byte{1, byte(journal.Stream), 4, 'a', 'c', 'm', 'e', 9, 0, 0x08, 0x07}
	if got, err := journal.ParseRecord(v1); err != nil || got.Tenant != "acme" || got.Now != 9 || got.Stream != 0 || got.Defs != nil || string(got.Frame) != "\x08\x07" {
		t.Fatalf("version 1 record: %+v, %v", got, err)
	}
	// One of version 2, before the last drain's tick, still reads.
	v2 := []byte{2, byte(journal.Stream), 4, 'a', 'c', 'm', 'e', 9, 0, 7, 0, 0x08, 0x07}
	if got, err := journal.ParseRecord(v2); err != nil || got.Tenant != "acme" || got.Now != 9 || got.Stream != 7 || got.Drained != 0 || string(got.Frame) != "\x08\x07" {
		t.Fatalf("version 2 record: %+v, %v", got, err)
	}
	sub := journal.AppendSubmit(nil, "t", 5, 6, []byte{0x0a, 0x00})
	got, err := journal.ParseRecord(sub)
	if err != nil || got.Kind != journal.Submit || got.Tenant != "t" || got.Now != 5 || got.Drained != 6 || len(got.Refused) != 0 || string(got.Frame) != "\x0a\x02\x0a\x00" {
		t.Fatalf("submit record: %+v, %v", got, err)
	}
}

// TestDueOutlastsKeptWindows: a record stays in the log until every bucket
// and rule window its items went to is past its late window, so that
// replay restores them whole: a sample's bucket, a span's stats buckets
// and the rule windows of spans and events alike.
func TestDueOutlastsKeptWindows(t *testing.T) {
	const (
		sec  = int64(time.Second)
		now  = 1_700_000_005 * sec
		late = 120 * sec
	)
	l, err := wal.Open(t.TempDir(), wal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Every window an item at ts falls in is due by the next 10 s tick
	// after ts + 20 s (a 20 s rule window).
	due := func(ts, now int64) int64 {
		if ts == 0 {
			ts = now
		}
		return (ts+20*sec)/(10*sec)*(10*sec) + 10*sec
	}
	tenants, err := service.NewTenants(service.TenantsConfig{MaxTenants: 10})
	if err != nil {
		t.Fatal(err)
	}
	j, err := journal.New(journal.Config{Log: l, Due: due, SpanHold: 30 * time.Second, LateWindow: time.Duration(late),
		Tenants: tenants, Limits: codec.DefaultLimits(), Ingest: ingestNothing{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ts := now - 3*sec
	acc := []window.Reason{window.Accepted}
	sp := []spans.Span{{Start: ts - sec, Duration: sec}}
	for _, tc := range []struct {
		name string
		got  int64
	}{
		{"timestamped sample", j.Due(now, []window.Sample{{Timestamp: ts}}, acc, nil, nil, false, false)},
		{"untimed sample", j.Due(now, []window.Sample{{}}, acc, nil, nil, false, false)},
		{"span", j.Due(now, nil, nil, sp, acc, false, false)},
		{"timestamped event", j.BatchDue(&window.Batch{Now: now, Events: []window.Event{{Timestamp: ts}}}, nil, nil)},
		{"untimed event", j.BatchDue(&window.Batch{Now: now, Events: []window.Event{{}}}, nil, nil)},
	} {
		at := ts
		if tc.name == "untimed sample" || tc.name == "untimed event" {
			at = now
		}
		if kept := due(at, now) + late; tc.got <= kept {
			t.Errorf("%s: due at %d, not after %d, the last tick its windows are kept", tc.name, tc.got/sec, kept/sec)
		}
	}
}

// TestRestoredSaysWhatTheLogHeld: a log that is new restores nothing; one
// holding an earlier run's record does.
func TestRestoredSaysWhatTheLogHeld(t *testing.T) {
	dir := t.TempDir()
	open := func() (*wal.Log, *journal.Journal) {
		t.Helper()
		l, err := wal.Open(dir, wal.Options{})
		if err != nil {
			t.Fatal(err)
		}
		tenants, err := service.NewTenants(service.TenantsConfig{MaxTenants: 10})
		if err != nil {
			t.Fatal(err)
		}
		j, err := journal.New(journal.Config{Log: l, Due: func(ts, now int64) int64 { return max(ts, now) + 10 }, SpanHold: time.Minute,
			Tenants: tenants, Limits: codec.DefaultLimits(), Ingest: ingestNothing{}, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		if err := j.Replay(); err != nil {
			t.Fatal(err)
		}
		return l, j
	}
	l, j := open()
	if j.Restored() {
		t.Fatal("a new log restored something")
	}
	data, _ := proto.Marshal(replaySeeds()[0])
	now := time.Now().UnixNano()
	if _, err := l.Append(journal.AppendRecord(nil, journal.Record{Kind: journal.Stream, Tenant: "acme", Now: now, Frame: data}), now+int64(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, j = open()
	defer l.Close()
	if !j.Restored() {
		t.Fatal("a log holding a record restored nothing")
	}
}
