package dogstatsd

import "syscall"

// setReceiveBuffer sets the socket's receive buffer to n bytes. Linux caps
// SO_RCVBUF at net.core.rmem_max; a process with CAP_NET_ADMIN can pass it
// with SO_RCVBUFFORCE, which is tried when the cap bit. It returns the
// size granted (the kernel reports twice that, by Linux's convention).
func setReceiveBuffer(c interface {
	SetReadBuffer(int) error
	SyscallConn() (syscall.RawConn, error)
}, n int) (int, error) {
	if err := c.SetReadBuffer(n); err != nil {
		return 0, err
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	got := 0
	rc.Control(func(fd uintptr) {
		got, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
		if got < 2*n {
			if syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, n) == nil {
				got, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
			}
		}
	})
	return got / 2, nil
}
