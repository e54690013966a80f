package service

import "time"

// SetReserveWait sets how long a request waits for room in the memory
// budget before it is refused (10 s outside tests).
func SetReserveWait(s *Server, d time.Duration) { s.reserveWait = d }
