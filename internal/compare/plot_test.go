package compare

import (
	"fmt"
	"image/color"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
)

// figure is one store's req/s and their ratios to the baseline store's
// measured next to them; zero means the case, or its ratio, did not run.
type figure struct {
	store         string
	read, write   float64
	readX, writeX float64
}

// figures are the req/s of a run, in the order the stores first ran.
type figures struct{ rows []figure }

func (f *figures) row(store string) *figure {
	for i := range f.rows {
		if f.rows[i].store == store {
			return &f.rows[i]
		}
	}
	f.rows = append(f.rows, figure{store: store})
	return &f.rows[len(f.rows)-1]
}

// set records the req/s of store and op, and its ratio x to the baseline.
func (f *figures) set(store, op string, rps, x float64) {
	r := f.row(store)
	if op == "read" {
		r.read, r.readX = rps, x
	} else {
		r.write, r.writeX = rps, x
	}
}

// get returns the req/s of a figure's op and its ratio to the baseline.
func (r figure) get(op string) (rps, x float64) {
	if op == "read" {
		return r.read, r.readX
	}
	return r.write, r.writeX
}

// writePlot draws f as a bar chart, read and write side by side for each
// store, each bar labelled with its req/s and its ratio to the baseline
// store's measured next to it, and saves it as a PNG at path; load says
// where the requests came from.
func writePlot(path string, f figures, baseline, load string) error {
	p := plot.New()
	p.Title.Text = "Session requests/s by store: one gorilla/sessions app, loopback HTTP, load from " + load + "\n" +
		"(bar labels: req/s and, below it, the ratio to " + baseline + " for the same operation, measured just before and after)"
	p.Title.TextStyle.Font.Size = vg.Points(12)
	p.X.Label.Text = "session store (Cohort clusters: 3 in-process nodes, ack mode)"
	p.Y.Label.Text = "requests/s (higher is better)"
	p.Y.Min = 0

	const barWidth = vg.Length(34)
	var names []string
	var top float64
	for _, r := range f.rows {
		names = append(names, r.store)
		top = max(top, r.read, r.write)
	}
	p.Y.Max = top * 1.18 // room for the labels
	p.Y.Tick.Marker = plot.TickerFunc(kiloTicks)
	for i, op := range []string{"read", "write"} {
		vals := make(plotter.Values, len(f.rows))
		var lab plotter.XYLabels
		for j, r := range f.rows {
			rps, x := r.get(op)
			vals[j] = rps
			lab.XYs = append(lab.XYs, plotter.XY{X: float64(j), Y: rps})
			lab.Labels = append(lab.Labels, barLabel(rps, x, r.store == baseline))
		}
		bars, err := plotter.NewBarChart(vals, barWidth)
		if err != nil {
			return fmt.Errorf("%s bars: %w", op, err)
		}
		offset := barWidth * vg.Length(float64(i)-0.5)
		bars.Offset = offset
		bars.Color = []color.Color{
			color.RGBA{R: 0x3b, G: 0x75, B: 0xaf, A: 0xff},
			color.RGBA{R: 0xef, G: 0x85, B: 0x36, A: 0xff},
		}[i]
		bars.LineStyle.Width = 0
		labels, err := plotter.NewLabels(lab)
		if err != nil {
			return fmt.Errorf("%s labels: %w", op, err)
		}
		labels.Offset = vg.Point{X: offset, Y: vg.Points(3)}
		for k := range labels.TextStyle {
			labels.TextStyle[k].XAlign = text.XCenter
			labels.TextStyle[k].YAlign = text.YBottom
			labels.TextStyle[k].Font = font.From(labels.TextStyle[k].Font, vg.Points(8))
		}
		p.Add(bars, labels)
		p.Legend.Add(op, bars)
	}
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = vg.Points(8)
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.6, float64(len(names))-0.4
	return p.Save(11*vg.Inch, 6*vg.Inch, path)
}

// kiloTicks marks 0 to hi in about six steps of 1, 2 or 5 × 10^n,
// labelled in thousands ("25k").
func kiloTicks(lo, hi float64) []plot.Tick {
	step := math.Pow(10, math.Floor(math.Log10(max(hi/6, 1))))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*step >= hi/6 {
			step *= m
			break
		}
	}
	var ts []plot.Tick
	for v := 0.0; v <= hi; v += step {
		if v >= lo {
			label := "0"
			if v > 0 {
				label = fmt.Sprintf("%gk", v/1000)
			}
			ts = append(ts, plot.Tick{Value: v, Label: label})
		}
	}
	return ts
}

// barLabel is "41.2k" with "2.31x <baseline>" below it when the baseline
// ran, for every store but the baseline.
func barLabel(rps, x float64, isBase bool) string {
	if rps == 0 {
		return "not run"
	}
	s := fmt.Sprintf("%.1fk", rps/1000)
	if x > 0 && !isBase {
		s += fmt.Sprintf("\n%.2fx", x)
	}
	return s
}
