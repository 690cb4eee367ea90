package wireguard

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// SocketDir is where userspace WireGuard implementations serve their UAPI
// socket and where wgctrl and wg(8) look for them.
const SocketDir = "/var/run/wireguard"

// UAPIName is the name wgctrl and `wg show` know the userspace device dev
// by in the calling thread's network namespace: dev itself in the host's
// (the initial) namespace, as upstream and wireguard-go name the socket,
// and dev.<netns inode> elsewhere. Every network namespace can have its
// own flannel-wg but all share /var/run/wireguard, so several flanneld in
// namespaces on one machine (a lab, a test) would otherwise take each
// other's socket. A kernel device is always known by its own name
// (wgctrl reaches it over netlink, which is per namespace).
func UAPIName(dev string) string {
	self, err := nsInode("/proc/thread-self/ns/net")
	if err != nil || !separateNetns(self) {
		return dev
	}
	return dev + "." + strconv.FormatUint(self, 10)
}

// separateNetns reports whether the namespace with inode self is not the
// host's: not init's, or, where init's cannot be read (a sandbox), one
// that `ip netns add` created.
func separateNetns(self uint64) bool {
	if init, err := nsInode("/proc/1/ns/net"); err == nil {
		return init != self
	}
	named, _ := os.ReadDir("/run/netns")
	for _, e := range named {
		if ino, err := nsInode(filepath.Join("/run/netns", e.Name())); err == nil && ino == self {
			return true
		}
	}
	return false
}

func nsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// uapiServer serves the UAPI protocol of one userspace device on its unix
// socket. It owns the accept loop and one goroutine per connection, and
// Close waits for them all.
type uapiServer struct {
	ln     *net.UnixListener
	handle func(net.Conn)

	mu    sync.Mutex // protects conns
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// listenUAPI creates dir/name.sock (mode 0600), replacing a stale socket
// no process answers on, and serves each connection with handle.
func listenUAPI(dir, name string, handle func(net.Conn)) (*uapiServer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("wireguard: UAPI socket directory: %w", err)
	}
	path := filepath.Join(dir, name+".sock")
	addr := &net.UnixAddr{Name: path, Net: "unix"}
	ln, err := net.ListenUnix("unix", addr)
	if err != nil {
		if c, derr := net.Dial("unix", path); derr == nil {
			c.Close()
			return nil, fmt.Errorf("wireguard: UAPI socket %s is in use by another process (another flanneld or wireguard-go for %s?)", path, name)
		}
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return nil, fmt.Errorf("wireguard: remove stale UAPI socket: %w", rerr)
		}
		if ln, err = net.ListenUnix("unix", addr); err != nil {
			return nil, fmt.Errorf("wireguard: UAPI socket: %w", err)
		}
	}
	// The socket configures keys: root only, as wireguard-go makes it.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("wireguard: UAPI socket: %w", err)
	}
	s := &uapiServer{ln: ln, handle: handle, conns: map[net.Conn]struct{}{}}
	s.wg.Go(s.accept)
	return s, nil
}

func (s *uapiServer) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // closed
		}
		s.mu.Lock()
		if s.conns == nil { // closing
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() {
			s.handle(c) // closes c
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		})
	}
}

// Close stops accepting, ends open connections, waits for their handlers
// and removes the socket file.
func (s *uapiServer) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// ReadDevice returns the WireGuard device dev of the calling thread's
// network namespace, userspace (by UAPIName) or kernel, for the doctor
// and tests.
func ReadDevice(dev string) (*wgtypes.Device, error) {
	c, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("wireguard: wgctrl: %w", err)
	}
	defer c.Close()
	if name := UAPIName(dev); name != dev {
		if d, err := c.Device(name); err == nil {
			return d, nil
		}
	}
	d, err := c.Device(dev)
	if err != nil {
		return nil, fmt.Errorf("wireguard: read %s: %w", dev, err)
	}
	return d, nil
}
