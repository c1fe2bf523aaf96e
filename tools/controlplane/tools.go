//go:build tools

// The control plane the Kubernetes tests run against, built from the same sources as a release:
// kube-apiserver and kube-controller-manager from k8s.io/kubernetes, etcd from go.etcd.io/etcd.
package controlplane

import (
	_ "go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
