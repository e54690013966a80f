package cluster

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ScheduleFile keeps a Membership's schedule on disk (under --wal-dir),
// so that a replica restarted routes what its write-ahead log replays by
// the member lists in force when that arrived, which a re-resolved DNS
// name no longer tells. The file is text: a header line, one line per
// version ("<number> <since, unix nanoseconds> <this replica's address
// in it, or -> <member>..."), and a last line with the CRC-32C of the
// lines before it. It is replaced whole (written aside, fsynced, renamed,
// its directory fsynced), so a reader finds the old schedule or the new
// one. The zero ScheduleFile keeps nothing.
type ScheduleFile struct {
	Path string
	// Self is this replica's peer address: a list restored that names
	// the replica by another address (its pod's former IP) has that
	// address owned by Self, which holds what it took.
	Self string
}

const scheduleHeader = "aggd member schedule 1"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Save replaces the file with vs.
func (f ScheduleFile) Save(vs []Version) error {
	var b bytes.Buffer
	b.WriteString(scheduleHeader + "\n")
	for _, v := range vs {
		// The file keeps this replica's former address only: an alias a
		// schedule adopted from a peer has (AdoptMembership), the peer's,
		// is not kept, and its old buckets then go to its former address.
		self := ""
		if v.was != "" && v.self == f.Self {
			self = v.was
		}
		if self == "" {
			self = "-"
			if slices.Contains(v.Ring.Members(), f.Self) {
				self = f.Self
			}
		}
		fmt.Fprintf(&b, "%d %d %s", v.N, v.Since, self)
		for _, m := range v.Ring.Members() {
			b.WriteByte(' ')
			b.WriteString(m)
		}
		b.WriteByte('\n')
	}
	tmp := f.Path + ".tmp"
	if err := writeSynced(tmp, appendScheduleSum(b.Bytes())); err != nil {
		return fmt.Errorf("member schedule: %w", err)
	}
	if err := os.Rename(tmp, f.Path); err != nil {
		return fmt.Errorf("member schedule: %w", err)
	}
	d, err := os.Open(filepath.Dir(f.Path))
	if err != nil {
		return fmt.Errorf("member schedule: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("member schedule: fsync %s: %w", d.Name(), err)
	}
	return nil
}

// appendScheduleSum appends to b the line of its checksum.
func appendScheduleSum(b []byte) []byte {
	return fmt.Appendf(b, "crc32c %08x\n", crc32.Checksum(b, castagnoli))
}

func writeSynced(path string, b []byte) error {
	fh, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := fh.Write(b); err != nil {
		fh.Close()
		return err
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		return err
	}
	return fh.Close()
}

// Load reads the schedule saved last, each version's address of this
// replica in the unexported was (empty for "-"). A missing file is an
// error that matches fs.ErrNotExist; a file that fails its checksum or
// does not parse is refused whole, with the reason.
func (f ScheduleFile) Load() ([]Version, error) {
	b, err := os.ReadFile(f.Path)
	if err != nil {
		return nil, err
	}
	vs, err := parseSchedule(b)
	if err != nil {
		return nil, fmt.Errorf("member schedule %s: %w", f.Path, err)
	}
	return vs, nil
}

// Former returns the addresses other than Self that this replica had in
// the saved schedule's lists (a pod's former IPs), or the error of Load.
func (f ScheduleFile) Former() ([]string, error) {
	vs, err := f.Load()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, v := range vs {
		if v.was != "" && v.was != f.Self && !slices.Contains(out, v.was) {
			out = append(out, v.was)
		}
	}
	return out, nil
}

func parseSchedule(b []byte) ([]Version, error) {
	body := bytes.TrimSuffix(b, []byte("\n"))
	i := bytes.LastIndexByte(body, '\n')
	if i < 0 {
		return nil, errors.New("no checksum line: the file is cut short")
	}
	body, last := b[:i+1], string(body[i+1:])
	sum, ok := strings.CutPrefix(last, "crc32c ")
	if !ok {
		return nil, fmt.Errorf("last line %q is not the checksum: the file is cut short", last)
	}
	want, err := strconv.ParseUint(sum, 16, 32)
	if err != nil {
		return nil, fmt.Errorf("checksum %q: %w", sum, err)
	}
	if got := crc32.Checksum(body, castagnoli); uint32(want) != got {
		return nil, fmt.Errorf("checksum %08x, want %08x: the file is damaged", got, want)
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, len(body)+1)
	if !sc.Scan() || sc.Text() != scheduleHeader {
		return nil, fmt.Errorf("first line %q, want %q", sc.Text(), scheduleHeader)
	}
	var vs []Version
	for n := 2; sc.Scan(); n++ {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			return nil, fmt.Errorf("line %d: want \"<number> <since> <self or -> <member>...\"", n)
		}
		num, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: version number: %w", n, err)
		}
		since, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: since: %w", n, err)
		}
		if k := len(vs); k > 0 && (num <= vs[k-1].N || since <= vs[k-1].Since) {
			return nil, fmt.Errorf("line %d: versions out of order", n)
		}
		for _, m := range fields[3:] {
			if _, _, err := net.SplitHostPort(m); err != nil {
				return nil, fmt.Errorf("line %d: member %q is not host:port: %w", n, m, err)
			}
		}
		v := Version{N: num, Since: since, Ring: NewRing(fields[3:])}
		if self := fields[2]; self != "-" {
			if !slices.Contains(v.Ring.Members(), self) {
				return nil, fmt.Errorf("line %d: this replica's address %q is not a member", n, self)
			}
			v.was = self
		}
		vs = append(vs, v)
	}
	if len(vs) == 0 {
		return nil, errors.New("no member list")
	}
	return vs, nil
}

// RestoreMembership returns the schedule of a replica starting at now:
// the one saved in file, if there is one, with first (the list resolved
// at start, nil if none was) owning the buckets from the first boundary
// at or after now, so that every earlier bucket keeps the list that owned
// it when its items arrived; without a saved schedule, first owns every
// bucket (NewMembership). A saved schedule that cannot be read is
// ignored, with the reason logged: the replica then routes as if it had
// none.
func RestoreMembership(file ScheduleFile, first []string, interval, keep, now int64, log *slog.Logger) *Membership {
	if file.Path == "" {
		return NewMembership(first, interval, keep)
	}
	vs, err := file.Load()
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return NewMembership(first, interval, keep)
	case err != nil:
		log.Warn("cluster member schedule ignored: replayed items are routed by the members resolved at start", "err", err)
		return NewMembership(first, interval, keep)
	}
	for i := range vs {
		if vs[i].was == file.Self {
			vs[i].was = ""
		} else if vs[i].was != "" {
			vs[i].self = file.Self
		}
	}
	m := &Membership{interval: interval, keep: keep}
	m.versions.Store(&vs)
	if first != nil {
		m.Schedule(first, now, now)
	}
	log.Info("cluster member schedule restored", "versions", len(vs), "from", file.Path)
	return m
}
