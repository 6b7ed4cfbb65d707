package rebalance

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

func TestShardsFromStatsSumsRatesOverHAProxies(t *testing.T) {
	b := func(name string, up int, scur, stot, req int64, http bool) runtime.BackendStat {
		return runtime.BackendStat{Name: name, ServersUp: up, Sessions: scur, SessionsTotal: stot, RequestsTotal: req, HasRequests: http}
	}
	lb1 := Reading{Socket: "lb1", Elapsed: 2 * time.Second,
		First:  []runtime.BackendStat{b("s0", 1, 0, 10, 100, true), b("s1", 1, 0, 0, 0, true), b("tcp", 1, 0, 50, 0, false)},
		Second: []runtime.BackendStat{b("s0", 1, 4, 20, 300, true), b("s1", 1, 1, 5, 10, true), b("tcp", 1, 2, 70, 0, false), b(maps.HoldShard, 1, 0, 0, 0, true)}}
	lb2 := Reading{Socket: "lb2", Elapsed: time.Second,
		First:  []runtime.BackendStat{b("s0", 1, 0, 0, 0, true), b("s1", 1, 0, 0, 0, true)},
		Second: []runtime.BackendStat{b("s0", 1, 1, 0, 50, true), b("s1", 0, 3, 0, 0, true)}}
	names := []string{"tcp", "s1", "s0", maps.HoldShard, "s0", "gone"}
	got, err := ShardsFromStats(names, Requests, []Reading{lb1, lb2})
	if err != nil {
		t.Fatal(err)
	}
	want := []Shard{
		{Name: "gone", Load: 0, Up: false},     // no such backend
		{Name: "s0", Load: 100 + 50, Up: true}, // 200 requests in 2 s, 50 in 1 s
		{Name: "s1", Load: 5, Up: false},       // no server up on lb2
		{Name: "tcp", Load: 10, Up: false},     // stot in tcp mode; not on lb2
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("requests:\n got %+v\nwant %+v", got, want)
	}
	got, err = ShardsFromStats([]string{"s0", "s1"}, Sessions, []Reading{lb1, lb2})
	if err != nil || got[0].Load != 5 || got[1].Load != 4 {
		t.Errorf("sessions: %+v, %v", got, err)
	}
	// Totals, one read.
	got, err = ShardsFromStats([]string{"s0"}, Requests, []Reading{{Second: lb1.Second}})
	if err != nil || got[0].Load != 300 {
		t.Errorf("totals: %+v, %v", got, err)
	}
	// No reading: up, no load.
	got, err = ShardsFromStats([]string{"s1", "s0"}, Requests, nil)
	if err != nil || !reflect.DeepEqual(got, []Shard{{Name: "s0", Up: true}, {Name: "s1", Up: true}}) {
		t.Errorf("no readings: %+v, %v", got, err)
	}
}

func TestShardsFromStatsCountersReset(t *testing.T) {
	r := Reading{Socket: "lb1", Elapsed: time.Second,
		First:  []runtime.BackendStat{{Name: "s0", ServersUp: 1, RequestsTotal: 100, HasRequests: true}},
		Second: []runtime.BackendStat{{Name: "s0", ServersUp: 1, RequestsTotal: 3, HasRequests: true}}}
	if _, err := ShardsFromStats([]string{"s0"}, Requests, []Reading{r}); !errors.Is(err, ErrCountersReset) {
		t.Errorf("got %v, want ErrCountersReset", err)
	}
	if _, err := ShardsFromStats([]string{"s0"}, "bytes", nil); !errors.Is(err, ErrInput) {
		t.Errorf("got %v, want ErrInput", err)
	}
}
