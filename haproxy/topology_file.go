package haproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"

	"github.com/shardmap/shardmap/internal/atomicfile"
)

// TopologyFile is a topology file opened for editing. Edits change the YAML
// document itself (its node tree), not a re-marshalled struct, so the
// operator's comments, key order and quoting survive; only the edited
// server entries change, and the whole file is re-indented by two spaces.
//
// A TopologyFile is not safe for concurrent use. Two processes editing the
// same file must serialise with LockTopology and open the file under it.
type TopologyFile struct {
	path string
	doc  yaml.Node
	topo *Topology
}

// OpenTopologyFile reads, parses and validates the topology file at path.
// Errors are those of LoadTopology (ErrTopology for a bad file).
func OpenTopologyFile(path string) (*TopologyFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	t, err := parseTopology(data, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	f := &TopologyFile{path: path, topo: t}
	if err := yaml.Unmarshal(data, &f.doc); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, ErrTopology, err)
	}
	return f, nil
}

// Topology is the file's current content, validated. Callers must not
// change it: edit through AddServer and RemoveServer.
func (f *TopologyFile) Topology() *Topology { return f.topo }

// AddServer appends s to shard's servers. The result must validate (the
// server is not listed anywhere yet, check only with health_check); if not,
// the file is left as it was and the error wraps ErrTopology. Nothing is
// written until Save.
func (f *TopologyFile) AddServer(shard string, s Server) error {
	seq, err := f.serversNode(shard)
	if err != nil {
		return err
	}
	var n yaml.Node
	if err := n.Encode(s); err != nil {
		return fmt.Errorf("encode server %s: %w", s.Addr, err)
	}
	old := seq.Content
	seq.Content = append(seq.Content[:len(old):len(old)], &n)
	if err := f.refresh(); err != nil {
		seq.Content = old
		return err
	}
	return nil
}

// RemoveServer removes the server with address addr from shard and returns
// it, with the comments attached to its entry. A shard keeps at least one
// server: removing the last one, or an address the shard does not list, is
// an error wrapping ErrTopology and leaves the file as it was. Nothing is
// written until Save.
func (f *TopologyFile) RemoveServer(shard, addr string) (Server, error) {
	seq, err := f.serversNode(shard)
	if err != nil {
		return Server{}, err
	}
	for i, item := range seq.Content {
		var s Server
		if err := item.Decode(&s); err != nil {
			return Server{}, bad("%s: shard %q server %d: %v", f.path, shard, i+1, err)
		}
		if s.Addr != addr {
			continue
		}
		old := seq.Content
		seq.Content = append(old[:i:i], old[i+1:]...)
		if err := f.refresh(); err != nil {
			seq.Content = old
			return Server{}, err
		}
		return s, nil
	}
	return Server{}, bad("%s: shard %q has no server %s", f.path, shard, addr)
}

// Bytes is the file's content as Save would write it.
func (f *TopologyFile) Bytes() ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&f.doc); err != nil {
		return nil, fmt.Errorf("encode %s: %w", f.path, err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode %s: %w", f.path, err)
	}
	return b.Bytes(), nil
}

// Save writes the edited file back atomically (atomicfile.Write): the file
// keeps its mode and owner.
func (f *TopologyFile) Save() error {
	data, err := f.Bytes()
	if err != nil {
		return err
	}
	return atomicfile.Write(f.path, data, 0o644)
}

// refresh re-parses the edited document from the bytes Save would write,
// so that what is validated is exactly what will be on disk.
func (f *TopologyFile) refresh() error {
	data, err := f.Bytes()
	if err != nil {
		return err
	}
	t, err := parseTopology(data, filepath.Dir(f.path))
	if err != nil {
		return err
	}
	f.topo = t
	return nil
}

// serversNode finds the sequence node of shard's servers. Only a plain
// document is edited: a shard or server list reached through an alias or a
// merge key is refused rather than changed somewhere unexpected.
func (f *TopologyFile) serversNode(shard string) (*yaml.Node, error) {
	if _, ok := f.topo.Shards[shard]; !ok {
		return nil, bad("%s: shard %q is not in the topology (shards: %v)", f.path, shard, f.topo.ShardNames())
	}
	if f.doc.Kind != yaml.DocumentNode || len(f.doc.Content) != 1 {
		return nil, bad("%s: not a single YAML document", f.path)
	}
	n := f.doc.Content[0]
	for _, key := range []string{"shards", shard, "servers"} {
		next := mappingValue(n, key)
		if next == nil {
			return nil, bad("%s: cannot edit shard %q: %q is not a plain key here (aliases and merge keys are not edited)", f.path, shard, key)
		}
		n = next
	}
	if n.Kind != yaml.SequenceNode {
		return nil, bad("%s: cannot edit shard %q: servers is not a plain list", f.path, shard)
	}
	return n, nil
}

// mappingValue returns the value node of key in mapping n, or nil when n is
// not a plain mapping or lacks the key.
func mappingValue(n *yaml.Node, key string) *yaml.Node {
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Kind == yaml.ScalarNode && k.Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// ErrTopologyLocked is returned by LockTopology when another process held
// the topology's lock for as long as the caller would wait.
var ErrTopologyLocked = errors.New("topology is locked by another process")

// TopologyLock is an exclusive lock on a topology file, held by this
// process until Unlock (or exit).
type TopologyLock struct {
	f *os.File
}

// lockPollEvery is how often LockTopology retries a held lock.
const lockPollEvery = 20 * time.Millisecond

// LockTopology takes an exclusive flock(2) on "<path>.lock", creating that
// file if needed, and so serialises every edit of the topology at path
// (mapctl shard add-server and remove-server hold it across reading the
// file, changing HAProxy and writing the file). It waits until ctx is done
// for a lock another process holds, then returns an error wrapping
// ErrTopologyLocked that names the lock file. The kernel drops the lock
// when the holder exits, even by kill -9; the lock file itself is never
// removed, since removing it would let two processes lock different files.
func LockTopology(ctx context.Context, path string) (*TopologyLock, error) {
	name := path + ".lock"
	f, err := os.OpenFile(name, os.O_RDONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock topology: %w", err)
	}
	start := time.Now()
	tick := time.NewTicker(lockPollEvery)
	defer tick.Stop()
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return &TopologyLock{f: f}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock topology: flock %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("%w: another mapctl holds %s (waited %s); try again when it has finished",
				ErrTopologyLocked, name, time.Since(start).Round(time.Millisecond))
		case <-tick.C:
		}
	}
}

// Unlock releases the lock.
func (l *TopologyLock) Unlock() error {
	if err := unix.Flock(int(l.f.Fd()), unix.LOCK_UN); err != nil {
		l.f.Close()
		return fmt.Errorf("unlock %s: %w", l.f.Name(), err)
	}
	return l.f.Close()
}
