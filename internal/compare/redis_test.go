package compare

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/boj/redistore"
	"github.com/gomodule/redigo/redis"
	"github.com/gorilla/sessions"
)

// openRedis starts a redis-server child process and returns a redistore
// on it. Its pool keeps a connection per client goroutine and checks a
// borrowed connection with PING only when it has been idle for a minute,
// as redigo's documentation suggests: redistore.NewRediStore would PING
// on every borrow, a second round trip per request.
func openRedis(sb, p *testing.B, log *slog.Logger) sessions.Store {
	sb.Helper()
	addr := startRedis(sb, p)
	pool := &redis.Pool{
		MaxIdle:     4 * clients,
		IdleTimeout: 4 * time.Minute,
		Dial:        func() (redis.Conn, error) { return redis.Dial("tcp", addr) },
		TestOnBorrow: func(c redis.Conn, t time.Time) error {
			if time.Since(t) < time.Minute {
				return nil
			}
			_, err := c.Do("PING")
			return err
		},
	}
	st, err := redistore.NewRediStoreWithPool(pool, hashKey)
	if err != nil {
		_ = pool.Close()
		sb.Fatalf("redistore: %v", err)
	}
	p.Cleanup(func() { _ = st.Close() })
	return st
}

// startRedis starts redis-server on a free loopback port, without
// persistence, in a temporary directory of p, waits until it answers PING
// and returns its address. The server is stopped in p's cleanup. Without
// redis-server on the PATH it skips sb, or fails it when CI=true.
func startRedis(sb, p *testing.B) string {
	sb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		msg := fmt.Sprintf("redis case needs redis-server (Debian: apt-get install redis-server): %v", err)
		if os.Getenv("CI") == "true" {
			sb.Fatal(msg)
		}
		sb.Skip(msg)
	}
	dir := p.TempDir()
	var errs []error
	for range 3 { // the free port may be taken before redis binds it
		addr, err := runRedis(p, bin, dir)
		if err == nil {
			return addr
		}
		errs = append(errs, err)
	}
	sb.Fatalf("start redis-server: %v", errors.Join(errs...))
	return ""
}

// runRedis runs one redis-server in dir and waits up to 10s for it to
// answer PING.
func runRedis(p *testing.B, bin, dir string) (string, error) {
	port, err := freePort()
	if err != nil {
		return "", err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logPath := filepath.Join(dir, fmt.Sprintf("redis-%d.log", port))
	logFile, err := os.Create(logPath)
	if err != nil {
		return "", err
	}
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return "", err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		_ = logFile.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-exited:
			_ = logFile.Close()
			out, _ := os.ReadFile(logPath)
			return "", fmt.Errorf("redis-server on %s exited: %s", addr, out)
		default:
		}
		if c, err := redis.Dial("tcp", addr, redis.DialConnectTimeout(time.Second)); err == nil {
			_, err = c.Do("PING")
			_ = c.Close()
			if err == nil {
				p.Cleanup(stop)
				return addr, nil
			}
		}
		if time.Now().After(deadline) {
			stop()
			return "", fmt.Errorf("redis-server on %s did not answer PING within 10s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
