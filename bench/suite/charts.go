package suite

import (
	"fmt"
	"image/color"
	"sort"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// barChart draws one horizontal bar per label (values in req/s) to path.
func barChart(path, title, xLabel string, labels []string, values []float64) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xLabel
	// The first label on top: plotter draws from the bottom up.
	n := len(values)
	vs := make(plotter.Values, n)
	names := make([]string, n)
	for i := range values {
		vs[n-1-i] = values[i]
		names[n-1-i] = labels[i]
	}
	bars, err := plotter.NewBarChart(vs, vg.Points(18))
	if err != nil {
		return fmt.Errorf("chart %s: %w", path, err)
	}
	bars.Horizontal = true
	bars.Color = color.RGBA{R: 0x33, G: 0x66, B: 0x99, A: 0xff}
	bars.LineStyle.Width = 0
	p.Add(bars)
	p.NominalY(names...)
	p.Y.Padding = vg.Points(2)
	p.Y.Tick.Label.XAlign = -1 // labels left-aligned from the canvas edge, none cut

	p.X.Min = 0
	p.X.Tick.Marker = plot.TickerFunc(func(min, max float64) []plot.Tick {
		ts := plot.DefaultTicks{}.Ticks(min, max)
		for i := range ts {
			if ts[i].Label != "" {
				ts[i].Label = count(int64(ts[i].Value))
			}
		}
		return ts
	})
	p.Add(plotter.NewGrid())
	if err := p.Save(9*vg.Inch, vg.Length(1.2+0.45*float64(n))*vg.Inch, path); err != nil {
		return fmt.Errorf("chart %s: %w", path, err)
	}
	return nil
}

// cdfSeries is one line of a latency CDF.
type cdfSeries struct {
	Name string
	Lat  []time.Duration
}

// cdfChart draws the empirical CDF of each series, latency in ms on a log
// axis, to path.
func cdfChart(path, title string, series []cdfSeries) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "store write -> first request routed to the new shard (ms, log scale)"
	p.Y.Label.Text = "share of changes"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	var args []any
	for _, s := range series {
		if len(s.Lat) == 0 {
			continue
		}
		l := append([]time.Duration(nil), s.Lat...)
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
		xys := make(plotter.XYs, len(l))
		for i, d := range l {
			xys[i].X = max(float64(d)/float64(time.Millisecond), 0.01)
			xys[i].Y = float64(i+1) / float64(len(l))
		}
		args = append(args, s.Name, xys)
	}
	if len(args) == 0 {
		return nil
	}
	if err := plotutil.AddLines(p, args...); err != nil {
		return fmt.Errorf("chart %s: %w", path, err)
	}
	p.Legend.Top = false
	p.Legend.Left = false
	p.Legend.XOffs = -vg.Points(10)
	p.Legend.YOffs = vg.Points(10)
	p.Add(plotter.NewGrid())
	if err := p.Save(9*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("chart %s: %w", path, err)
	}
	return nil
}
