"""Resource statistics of containers and pods: cgroup and network readers, the collector
behind the CRI stats RPCs, and the cadvisor-style metrics of ListPodSandboxMetrics."""
