package codec

import "google.golang.org/protobuf/encoding/protowire"

// CallID names one forwarded call (aggd.v1.ForwardRequest's replica_id
// and sequence); the zero CallID names none.
type CallID struct{ Replica, Sequence uint64 }

// PeerProtocol is the version of what replicas say to each other (the
// ForwardRequest's fields and what they mean) that this release speaks.
// A peer call carries it in its metadata under PeerProtocolKey, and a
// replica refuses a call of another version, or of none (a release from
// before it), rather than read it by the wrong rules. It changes when the
// meaning of the peer messages does.
const (
	PeerProtocol    = "1"
	PeerProtocolKey = "aggd-peer-protocol"
)

// Forward is what a ForwardRequest says besides its batch.
type Forward struct {
	Tenant string
	// Now is the forwarding replica's arrival time, Unix nanoseconds.
	Now  int64
	Call CallID
}

// ParseForward reads a ForwardRequest's tenant, arrival time and name.
func ParseForward(buf []byte) (Forward, error) {
	var f Forward
	for len(buf) > 0 {
		num, typ, n := protowire.ConsumeTag(buf)
		if n < 0 {
			return Forward{}, MalformedError{What: "ForwardRequest"}
		}
		buf = buf[n:]
		switch {
		case num == 2 && typ == protowire.BytesType:
			var v []byte
			v, n = protowire.ConsumeBytes(buf)
			f.Tenant = string(v)
		case num == 3 && typ == protowire.VarintType:
			var v uint64
			v, n = protowire.ConsumeVarint(buf)
			f.Now = int64(v)
		case num == 5 && typ == protowire.Fixed64Type:
			f.Call.Replica, n = protowire.ConsumeFixed64(buf)
		case num == 6 && typ == protowire.VarintType:
			f.Call.Sequence, n = protowire.ConsumeVarint(buf)
		default:
			n = protowire.ConsumeFieldValue(num, typ, buf)
		}
		if n < 0 {
			return Forward{}, MalformedError{What: "ForwardRequest"}
		}
		buf = buf[n:]
	}
	if f.Now == 0 {
		return Forward{}, MalformedError{What: "ForwardRequest without arrival_unix_nano"}
	}
	return f, nil
}

// AppendForward appends a ForwardRequest of batch, an encoded aggd.v1
// Batch, to b.
func AppendForward(b, batch []byte, f Forward, membership uint64) []byte {
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, batch)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendString(b, f.Tenant)
	b = protowire.AppendTag(b, 3, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(f.Now))
	b = protowire.AppendTag(b, 4, protowire.VarintType)
	b = protowire.AppendVarint(b, membership)
	if f.Call != (CallID{}) {
		b = protowire.AppendTag(b, 5, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, f.Call.Replica)
		b = protowire.AppendTag(b, 6, protowire.VarintType)
		b = protowire.AppendVarint(b, f.Call.Sequence)
	}
	return b
}

// ForwardSeeds returns the seeds of a ForwardRequest (an aggd.v1 Batch, a
// view into buf), or nil, and whether they are a hand-over's.
func ForwardSeeds(buf []byte) (seeds []byte, handedOver bool) {
	for len(buf) > 0 {
		num, typ, n := protowire.ConsumeTag(buf)
		if n < 0 {
			return nil, false
		}
		buf = buf[n:]
		switch {
		case num == 7 && typ == protowire.BytesType:
			seeds, _ = protowire.ConsumeBytes(buf)
		case num == 8 && typ == protowire.VarintType:
			v, _ := protowire.ConsumeVarint(buf)
			handedOver = v != 0
		}
		if n = protowire.ConsumeFieldValue(num, typ, buf); n < 0 {
			return nil, false
		}
		buf = buf[n:]
	}
	return seeds, handedOver
}

// ForwardDecisions calls fn with each trace decision of a ForwardRequest
// (traces_kept and traces_dropped), in their order in buf. It stops at
// the first field it cannot read; an id not 16 bytes long is skipped.
func ForwardDecisions(buf []byte, fn func(id [16]byte, keep bool)) {
	for len(buf) > 0 {
		num, typ, n := protowire.ConsumeTag(buf)
		if n < 0 {
			return
		}
		buf = buf[n:]
		if (num == 9 || num == 10) && typ == protowire.BytesType {
			if v, m := protowire.ConsumeBytes(buf); m >= 0 && len(v) == 16 {
				fn([16]byte(v), num == 9)
			}
		}
		if n = protowire.ConsumeFieldValue(num, typ, buf); n < 0 {
			return
		}
		buf = buf[n:]
	}
}

// AppendForwardDecision appends to a ForwardRequest the decision on
// trace id: traces_kept when keep is set, else traces_dropped.
func AppendForwardDecision(b []byte, id [16]byte, keep bool) []byte {
	num := protowire.Number(10)
	if keep {
		num = 9
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, id[:])
}
