package flush

// ShardLocked reports whether shard i's lock is held.
func (a *Aggregator) ShardLocked(i int) bool {
	if a.shards[i].mu.TryLock() {
		a.shards[i].mu.Unlock()
		return false
	}
	return true
}
