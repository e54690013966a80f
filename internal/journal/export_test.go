package journal

import "github.com/aggd/aggd/internal/codec"

// AppendRecordDecoded is AppendRecord for a record whose frame the decoder
// of series read last, as Take writes it.
func AppendRecordDecoded(b []byte, r Record, series *codec.Series) []byte {
	b, _ = appendRecord(b, r, series)
	return b
}
