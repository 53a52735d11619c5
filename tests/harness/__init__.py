"""The cluster harness the k8s and node tiers (and the cluster benchmarks) run on.

- ``builds``: the Go-built binaries and the images each tier needs, built on first use.
- ``controlplane``: etcd, kube-apiserver, kube-controller-manager, kube-scheduler as local processes.
- ``kube``: a small Kubernetes API client; ``podrunner``: the stand-in kubelet of the k8s tier.
- ``operator``: namespaces, kubectl and the operator as a ``kopf run`` subprocess.
- ``cluster``: a one-node cluster with a real kubelet and containerd (the node tier).
- ``release``: the project's images and its Helm chart installed on that node.
"""
