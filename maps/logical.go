package maps

// LogicalSuffix ends the key prefix of the logical map of routing: ids.
const LogicalSuffix = ":logical"

// LogicalPrefix is the key prefix of the logical map (logical shard ->
// shard) of routing: ids, for a store under prefix (DefaultPrefix when
// empty): prefix + LogicalSuffix. The logical map is an assignments set of
// its own (hash, change log, syncers), kept apart from the moved map under
// prefix; its keys keep prefix's hash tag, so they stay in its Redis Cluster
// slot.
func LogicalPrefix(prefix string) string {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return prefix + LogicalSuffix
}
