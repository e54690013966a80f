package main

// instanceID is the service.instance.id of this replica's OTLP aggregates:
// outside cluster mode replicas each write their own aggregates of a
// series, told apart by their hostnames; in cluster mode a series has one
// owner, so one writer, and no instance id.
func instanceID(cfg config) string {
	if cfg.Cluster.on() {
		return ""
	}
	return cfg.Hostname
}
