package main

import (
	"bytes"
	"context"
	"html/template"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/shardmap/shardmap/internal/cli"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/syncer"
)

// statusSource is the syncer as the page and the health checks read it.
// *syncer.Syncer implements it.
type statusSource interface {
	Status() syncer.Status
	ShardCounts() map[string]int
}

// changeLog is the Redis side the page reads. *maps.Store implements it.
type changeLog interface {
	RecentChanges(ctx context.Context, n int) ([]maps.Change, []maps.BadEntry, error)
	LagAfter(ctx context.Context, id string) (maps.Lag, error)
	CountAfter(ctx context.Context, id string, limit int64) (int64, error)
}

// recentShown is how many change-log entries the page lists.
const recentShown = 20

// statusPage serves the read-only status page at "/": this syncer's
// targets with their state and lag, the last change-log entries, and the
// users per shard as an SVG bar chart. Server-rendered, no scripts, no
// external resources; it refreshes itself every 5 s. Redis being away
// shows on the page, it does not fail it.
type statusPage struct {
	name, mapPath string
	targets       []string
	s             statusSource
	log           changeLog
	logger        *slog.Logger
	build         cli.Build
}

// pageTarget is one target's row.
type pageTarget struct {
	Target, State, Problem, Applied string
	Entries                         int
	Lag                             string // "caught up", "12 entries, 1.2s", or why unknown
}

// pageBar is one shard's bar in the chart.
type pageBar struct {
	Shard     string
	Users     int
	Y, Width  int
	TextY     int
	CountX    int
	BarHeight int
}

type pageData struct {
	Name, Map, Now string
	Build          cli.Build
	Targets        []pageTarget
	Changes        []maps.Change
	ChangesErr     string
	Bars           []pageBar
	ChartHeight    int
	TotalUsers     int
}

// Chart geometry, in SVG user units.
const (
	chartLabelW = 140
	chartBarMax = 420
	chartRow    = 26
	chartBar    = 18
)

func (p *statusPage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	st := p.s.Status()
	d := pageData{Name: p.name, Map: p.mapPath, Now: time.Now().UTC().Format(time.RFC3339), Build: p.build}
	for _, t := range st.Targets {
		ts := syncer.Status{State: t.State, Standby: t.Standby, Applied: t.Applied}
		d.Targets = append(d.Targets, pageTarget{Target: t.Address, State: t.State, Problem: t.Problem, Applied: t.Applied,
			Entries: t.Entries, Lag: p.lag(ctx, ts)})
	}
	changes, _, err := p.log.RecentChanges(ctx, recentShown)
	if err != nil {
		d.ChangesErr = err.Error()
	}
	d.Changes = changes
	d.Bars, d.ChartHeight, d.TotalUsers = bars(p.s.ShardCounts())

	var buf bytes.Buffer
	if err := pageTmpl.Execute(&buf, d); err != nil {
		p.logger.Warn("status page: render failed", "err", err)
		http.Error(w, "status page: render failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(buf.Bytes())
}

// lag describes how far the target is behind the change log.
func (p *statusPage) lag(ctx context.Context, st syncer.Status) string {
	switch {
	case st.Standby:
		return "standby"
	case st.Applied == "" || st.Applied == maps.ZeroID && st.State == "starting":
		return "no position yet"
	}
	lag, err := p.log.LagAfter(ctx, st.Applied)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	if !lag.Behind {
		return "caught up"
	}
	n, err := p.log.CountAfter(ctx, st.Applied, 10_000)
	if err != nil {
		return "behind by " + lag.Age.Round(time.Millisecond).String()
	}
	more := ""
	if n == 10_000 {
		more = "+"
	}
	return strconv.FormatInt(n, 10) + more + " entries, oldest waiting " + lag.Age.Round(time.Millisecond).String()
}

// bars lays out the chart: one row per shard, sorted by name, bar widths
// scaled to the largest count.
func bars(counts map[string]int) (out []pageBar, height, total int) {
	names := make([]string, 0, len(counts))
	most := 0
	for sh, n := range counts {
		names = append(names, sh)
		most = max(most, n)
		total += n
	}
	sort.Strings(names)
	for i, sh := range names {
		w := 0
		if most > 0 {
			w = max(1, counts[sh]*chartBarMax/most)
		}
		y := 6 + i*chartRow
		out = append(out, pageBar{Shard: sh, Users: counts[sh], Y: y, Width: w, TextY: y + chartBar - 4,
			CountX: chartLabelW + w + 6, BarHeight: chartBar})
	}
	return out, 12 + len(names)*chartRow, total
}

// logTime is when Redis logged the entry id (its millisecond part), in UTC.
func logTime(id string) string {
	ms, _, ok := maps.ParseID(id)
	if !ok || ms > 1<<53 {
		return ""
	}
	return time.UnixMilli(int64(ms)).UTC().Format("2006-01-02 15:04:05.000")
}

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{"logTime": logTime}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<title>shardmap syncer {{.Name}}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .2em; }
h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
.meta { color: #666; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: .25em .8em .25em 0; border-bottom: 1px solid #ddd; vertical-align: top; }
code { font-size: 13px; }
.ready, .standby { color: #176f2c; font-weight: 600; }
.bad { color: #b00020; font-weight: 600; }
.problem { color: #b00020; font-size: 13px; }
svg text { font: 13px system-ui, sans-serif; fill: #222; }
</style>
</head>
<body>
<h1>shardmap syncer <code>{{.Name}}</code></h1>
<div class="meta">map <code>{{.Map}}</code> · version {{.Build.Version}} · {{.Now}} · refreshes every 5 s</div>

<h2>Targets</h2>
<table id="targets">
<tr><th>Target</th><th>State</th><th>Applied log ID</th><th>Entries</th><th>Lag</th></tr>
{{range .Targets}}<tr>
<td><code class="target">{{.Target}}</code></td>
<td><span class="{{if or (eq .State "ready") (eq .State "standby")}}{{.State}}{{else}}bad{{end}}">{{.State}}</span>{{if .Problem}}<div class="problem">{{.Problem}}</div>{{end}}</td>
<td><code>{{.Applied}}</code></td>
<td>{{.Entries}}</td>
<td>{{.Lag}}</td>
</tr>
{{end}}</table>

<h2>Users per shard</h2>
{{if .Bars}}<svg id="shards" xmlns="http://www.w3.org/2000/svg" width="660" height="{{.ChartHeight}}" role="img" aria-label="users per shard">
{{range .Bars}}<g class="bar"><text x="0" y="{{.TextY}}" class="shard">{{.Shard}}</text><rect x="140" y="{{.Y}}" width="{{.Width}}" height="{{.BarHeight}}" fill="#3b7dd8"></rect><text x="{{.CountX}}" y="{{.TextY}}">{{.Users}}</text></g>
{{end}}</svg>
<div class="meta">{{.TotalUsers}} users in the live map, as this syncer knows it</div>
{{else}}<p class="meta">No users in the live map yet (before the first full sync, or the map is empty).</p>{{end}}

<h2>Recent changes</h2>
{{if .ChangesErr}}<p class="bad">Cannot read the change log: {{.ChangesErr}}</p>{{end}}
{{if .Changes}}<table id="changes">
<tr><th>Logged (UTC)</th><th>Log ID</th><th>Op</th><th>User</th><th>Shard</th></tr>
{{range .Changes}}<tr><td>{{logTime .ID}}</td><td><code>{{.ID}}</code></td><td>{{if .Op}}{{.Op}}{{else}}<span class="bad">invalid</span>{{end}}</td><td>{{.User}}</td><td>{{.Shard}}</td></tr>
{{end}}</table>{{else if not .ChangesErr}}<p class="meta">The change log is empty.</p>{{end}}
</body>
</html>
`))
