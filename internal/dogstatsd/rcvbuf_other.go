//go:build !linux

package dogstatsd

import "syscall"

// setReceiveBuffer sets the socket's receive buffer to n bytes.
func setReceiveBuffer(c interface {
	SetReadBuffer(int) error
	SyscallConn() (syscall.RawConn, error)
}, n int) (int, error) {
	return n, c.SetReadBuffer(n)
}
