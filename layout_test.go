package cohort_test

import (
	"encoding/json"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/cohort-cluster/cohort"

// layers lists the library packages from the top down: a package may import
// only those after it.
var layers = []string{"web", "manager", "replication", "membership"}

type listed struct {
	ImportPath string
	Dir        string
	Name       string
	Deps       []string
}

func goList(t *testing.T) []listed {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps=false", "-json", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []listed
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p listed
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// TestImportsPointDown fails when a lower layer imports a higher one.
func TestImportsPointDown(t *testing.T) {
	for _, p := range goList(t) {
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		i := slices.Index(layers, rel)
		if i < 0 {
			continue
		}
		for _, dep := range p.Deps {
			d := strings.TrimPrefix(dep, module+"/")
			if j := slices.Index(layers, d); j >= 0 && j <= i {
				t.Errorf("%s imports %s: imports must point down (%s)", rel, d, strings.Join(layers, " -> "))
			}
			if strings.HasPrefix(dep, module+"/cmd/") || strings.HasPrefix(dep, module+"/examples/") {
				t.Errorf("%s imports %s", rel, d)
			}
		}
	}
}

// TestPackageDocs fails when a package lacks a doc.go whose comment starts
// "Package <name>", or documents itself in more than one file.
func TestPackageDocs(t *testing.T) {
	for _, p := range goList(t) {
		if p.Name == "main" {
			continue
		}
		fset := token.NewFileSet()
		var documented []string
		files, _ := filepath.Glob(filepath.Join(p.Dir, "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			af, err := parser.ParseFile(fset, f, src, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Fatal(err)
			}
			if af.Doc != nil {
				documented = append(documented, filepath.Base(f))
				if !strings.HasPrefix(af.Doc.Text(), "Package "+p.Name+" ") {
					t.Errorf("%s: package comment must start %q", f, "Package "+p.Name)
				}
			}
		}
		if !slices.Equal(documented, []string{"doc.go"}) {
			t.Errorf("%s: package documented in %v, want exactly doc.go", p.ImportPath, documented)
		}
	}
}

// TestReadmeExamplesBuild builds every Go program of the README, so that
// the first code an application developer copies compiles.
func TestReadmeExamplesBuild(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	var progs []string
	blocks := strings.Split(string(b), "```go\n")
	for _, block := range blocks[1:] { // blocks[0] is the text before the first
		code, _, ok := strings.Cut(block, "```")
		if ok && strings.HasPrefix(code, "package main") {
			progs = append(progs, code)
		}
	}
	if len(progs) == 0 {
		t.Fatal("no Go program in README.md")
	}
	// Inside the module, so that its packages resolve.
	dir, err := os.MkdirTemp(".", ".readme-example-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	for i, code := range progs {
		sub := filepath.Join(dir, strconv.Itoa(i))
		if err := os.Mkdir(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sub, "main.go"), []byte(code), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("go", "vet", "./"+sub).CombinedOutput(); err != nil {
			t.Errorf("README program %d does not build: %v\n%s\n%s", i+1, err, out, code)
		}
	}
}
