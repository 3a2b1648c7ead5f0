package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromium finds Debian's chromium. In CI it must be there (.ci/run
// installs it); elsewhere the test skips.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium not found; .ci/run installs the Debian package chromium")
	}
	t.Skip("the dashboard test needs chromium (apt-get install chromium)")
	return ""
}

// TestDashboardInChromium opens node 1's /cluster/ page in a real headless
// Chromium: with 3 nodes up it shows 3 alive members; after node 3 is
// killed it shows node 3 dead. It saves a screenshot (in
// COHORT_SCREENSHOT_DIR when set, else in the test's temporary directory).
func TestDashboardInChromium(t *testing.T) {
	exe := chromium(t)
	_, _, n1, n2, n3 := startThree(t)
	checkCounter(t, n2) // a session on node 2, for the bars

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1200, 800),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(browser, 90*time.Second)
	defer cancel()

	count := func(selector string) int {
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('`+selector+`').length`))
		if err != nil {
			t.Fatalf("evaluate %s: %v", selector, err)
		}
		return n
	}
	waitPage := func(what, selector string, want int) {
		t.Helper()
		for count(selector) != want {
			if ctx.Err() != nil {
				t.Fatalf("the page never showed %s", what)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+n1.http+"/cluster/")); err != nil {
		t.Fatal(err)
	}
	waitPage("3 alive members", `#members tbody tr[data-state="alive"]`, 3)
	waitPage("sessions on node2", `#bars .bar[data-route="node2"]`, 1)

	if err := n3.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-n3.done
	waitPage("node3 dead", `#members tbody tr[data-route="node3"][data-state="dead"]`, 1)
	waitPage("node3 failing in the events", `#events .fail`, 1)
	if n := count(`#members tbody tr[data-state="alive"]`); n != 2 {
		t.Errorf("%d alive members after the kill, want 2", n)
	}

	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100: PNG
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("COHORT_SCREENSHOT_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	path := filepath.Join(dir, "dashboard.png")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(png))
}
