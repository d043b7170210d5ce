// Command cardgate-controlplane runs a real Kubernetes control plane on
// loopback for cardgate's tests and playground: an embedded etcd,
// kube-apiserver and kube-controller-manager, all built from Kubernetes' own
// modules and configured as a real cluster is (TLS everywhere, a
// service-account issuer with OIDC discovery, Node+RBAC authorization, the
// admission plugins clusters run). No kubelet and no scheduler: pods are
// stored, never run.
//
//	cardgate-controlplane up --dir D [--stdin-lifeline] [--ephemeral]
//	                                      start everything; print "ready <url>"
//	cardgate-controlplane apiserver ...   kube-apiserver (run by `up`)
//	cardgate-controlplane controller-manager ...
//
// `up` writes D/admin.kubeconfig (system:masters), D/alice.kubeconfig (user
// alice, group payments-oncall) and D/bob.kubeconfig (user bob, no group),
// then D/ready. It stops, children included, on SIGINT/SIGTERM, when a child
// dies, or (with --stdin-lifeline) when its stdin closes, so a test process
// that dies cannot leave a control plane behind.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

// Controllers the tests rely on: owner references (garbage collector),
// namespace deletion, Deployments creating ReplicaSets creating Pods, and
// ServiceAccounts with their tokens and the root CA ConfigMap.
var controllers = strings.Join([]string{
	"garbage-collector-controller",
	"namespace-controller",
	"deployment-controller",
	"replicaset-controller",
	"serviceaccount-controller",
	"serviceaccount-token-controller",
	"root-ca-certificate-publisher-controller",
}, ",")

// Admission plugins as a real cluster enables them (on top of the defaults).
var admission = strings.Join([]string{
	"NamespaceLifecycle", "LimitRanger", "ServiceAccount", "NodeRestriction",
	"MutatingAdmissionWebhook", "ValidatingAdmissionWebhook",
	"ValidatingAdmissionPolicy", "PodSecurity", "ResourceQuota",
}, ",")

// users are the client-certificate identities `up` writes kubeconfigs for.
var users = []struct {
	file, name string
	groups     []string
}{
	{"admin", "cardgate-admin", []string{"system:masters"}},
	{"controller-manager", "system:kube-controller-manager", nil},
	{"alice", "alice", []string{"payments-oncall"}},
	{"bob", "bob", nil},
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: cardgate-controlplane up|apiserver|controller-manager ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "apiserver":
		os.Args = os.Args[1:]
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "controller-manager":
		os.Args = os.Args[1:]
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "up":
		if err := up(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "cardgate-controlplane:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

func up(args []string) error {
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	dir := fs.String("dir", "", "state directory (certificates, etcd data, kubeconfigs, logs)")
	lifeline := fs.Bool("stdin-lifeline", false, "stop when stdin reaches end of file")
	ephemeral := fs.Bool("ephemeral", false, "remove the state directory on exit")
	fs.Parse(args)
	if *dir == "" {
		return errors.New("--dir is required")
	}
	d, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(d, 0o700); err != nil {
		return err
	}
	if *ephemeral {
		defer os.RemoveAll(d)
	}
	os.Remove(filepath.Join(d, "ready"))
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", ports[2])
	if err := writePKI(d, server); err != nil {
		return err
	}
	etcd, err := startEtcd(d, ports[0], ports[1])
	if err != nil {
		return err
	}
	defer etcd.Close()

	died := make(chan error, 2)
	var children []*child
	defer func() {
		for _, c := range children {
			c.cmd.Process.Signal(syscall.SIGTERM)
		}
		for _, c := range children {
			c.waitOrKill()
		}
	}()
	api, err := spawn(d, "apiserver", apiserverArgs(d, ports[0], ports[2]), died)
	if err != nil {
		return err
	}
	children = append(children, api)
	if err := waitReady(d, server, "/readyz", died); err != nil {
		return err
	}
	kcm, err := spawn(d, "controller-manager", controllerManagerArgs(d), died)
	if err != nil {
		return err
	}
	children = append(children, kcm)
	// The default ServiceAccount appearing shows the controller manager works.
	if err := waitReady(d, server, "/api/v1/namespaces/default/serviceaccounts/default", died); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d, "ready"), []byte(server+"\n"), 0o600); err != nil {
		return err
	}
	fmt.Printf("ready %s\n", server)
	return waitForStop(*lifeline, died)
}

// waitForStop blocks until a signal, a child's death or (with lifeline) the
// end of stdin.
func waitForStop(lifeline bool, died <-chan error) error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	eof := make(chan struct{})
	if lifeline {
		go func() {
			io.Copy(io.Discard, os.Stdin)
			close(eof)
		}()
	}
	select {
	case <-sig:
		return nil
	case <-eof:
		return nil
	case err := <-died:
		return err
	}
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func startEtcd(d string, clientPort, peerPort int) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "cardgate"
	cfg.Dir = filepath.Join(d, "etcd")
	os.RemoveAll(cfg.Dir)
	cu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	pu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(d, "etcd.log")}
	// The data is thrown away with the directory: no fsync per write.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("etcd did not become ready in 60s")
	}
}

func apiserverArgs(d string, etcdPort, port int) []string {
	p := func(f string) string { return filepath.Join(d, f) }
	return []string{
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdPort),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The kubernetes Service's endpoints cannot name a loopback address;
		// nothing in the tests dials that Service.
		"--endpoint-reconciler-type=none",
		fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir=" + p("apiserver-certs"),
		"--tls-cert-file=" + p("apiserver.crt"),
		"--tls-private-key-file=" + p("apiserver.key"),
		"--client-ca-file=" + p("ca.crt"),
		fmt.Sprintf("--service-account-issuer=https://127.0.0.1:%d", port),
		"--service-account-key-file=" + p("sa.pub"),
		"--service-account-signing-key-file=" + p("sa.key"),
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=" + admission,
		"--allow-privileged=true",
		"--profiling=false",
	}
}

func controllerManagerArgs(d string) []string {
	p := func(f string) string { return filepath.Join(d, f) }
	return []string{
		"--kubeconfig=" + p("controller-manager.kubeconfig"),
		"--controllers=" + controllers,
		"--service-account-private-key-file=" + p("sa.key"),
		"--root-ca-file=" + p("ca.crt"),
		"--use-service-account-credentials=true",
		"--leader-elect=false",
		"--secure-port=0",
		"--concurrent-gc-syncs=5",
	}
}

// child is a running subcommand; done closes when it has exited.
type child struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// spawn runs this binary's subcommand sub with its log in D/sub.log; its
// exit is reported on died. Pdeathsig ends it if `up` itself is killed.
func spawn(d, sub string, args []string, died chan<- error) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(d, sub+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, append([]string{sub}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		log.Close()
		close(c.done)
		died <- fmt.Errorf("%s exited (%v); see %s", sub, err, log.Name())
	}()
	return c, nil
}

// waitOrKill gives a child 10s to stop after SIGTERM, then kills it.
func (c *child) waitOrKill() {
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
}

// waitReady polls path on the API server as the admin until it answers 200.
func waitReady(d, server, path string, died <-chan error) error {
	client, err := adminClient(d)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(180 * time.Second)
	last := "no answer"
	for time.Now().Before(deadline) {
		select {
		case err := <-died:
			return err
		default:
		}
		resp, err := client.Get(server + path)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("GET %s not ready after 180s: %s", path, last)
}

func adminClient(d string) (*http.Client, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(d, "admin.crt"), filepath.Join(d, "admin.key"))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(d, "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}},
	}, nil
}

// writePKI creates the cluster CA, the API server's serving certificate,
// the service-account signing key and one client certificate and
// kubeconfig per user.
func writePKI(d, server string) error {
	caKey, caCert, err := newCA()
	if err != nil {
		return err
	}
	if err := writeCert(d, "ca", caKey, caCert); err != nil {
		return err
	}
	serving := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if err := issue(d, "apiserver", serving, caKey, caCert); err != nil {
		return err
	}
	for _, u := range users {
		tmpl := &x509.Certificate{
			Subject:     pkix.Name{CommonName: u.name, Organization: u.groups},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		if err := issue(d, u.file, tmpl, caKey, caCert); err != nil {
			return err
		}
		if err := writeKubeconfig(d, u.file, u.name, server); err != nil {
			return err
		}
	}
	return writeSAKey(d)
}

func newCA() (*ecdsa.PrivateKey, *x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "cardgate-controlplane-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return key, cert, err
}

func issue(d, name string, tmpl *x509.Certificate, caKey *ecdsa.PrivateKey, ca *x509.Certificate) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(365 * 24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	return writeCert(d, name, key, cert)
}

func writeCert(d, name string, key *ecdsa.PrivateKey, cert *x509.Certificate) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(d, name+".key"), "PRIVATE KEY", keyDER); err != nil {
		return err
	}
	return writePEM(filepath.Join(d, name+".crt"), "CERTIFICATE", cert.Raw)
}

// writeSAKey creates the RSA key the API server signs ServiceAccount tokens
// with (RS256, as on most clusters) and its public half.
func writeSAKey(d string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(d, "sa.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key)); err != nil {
		return err
	}
	return writePEM(filepath.Join(d, "sa.pub"), "PUBLIC KEY", pub)
}

func writePEM(path, kind string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
}

func writeKubeconfig(d, file, user, server string) error {
	b64 := func(f string) (string, error) {
		raw, err := os.ReadFile(filepath.Join(d, f))
		return base64.StdEncoding.EncodeToString(raw), err
	}
	ca, err := b64("ca.crt")
	if err != nil {
		return err
	}
	crt, err := b64(file + ".crt")
	if err != nil {
		return err
	}
	key, err := b64(file + ".key")
	if err != nil {
		return err
	}
	text := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: cardgate
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: cardgate
  context:
    cluster: cardgate
    user: %s
    namespace: default
current-context: cardgate
`, server, ca, user, crt, key, user)
	return os.WriteFile(filepath.Join(d, file+".kubeconfig"), []byte(text), 0o600)
}
