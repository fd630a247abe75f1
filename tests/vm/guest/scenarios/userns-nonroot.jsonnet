// Configuration of the userns-nonroot scenario (issue 27): every isolation
// option for a runner started as nobody, which makes actions' namespaces
// inside user namespaces; every action in a cgroup of its own (the
// runner's subtree delegated to nobody) with a memory limit.
{
  buildDirectoryPath: '/build',
  grpcServers: [{
    listenPaths: ['/run/rbe/runner.sock'],
    authenticationPolicy: { allow: {} },
  }],
  actionCgroups: {
    memoryMax: '64M',
  },
  sampleCgroupResourceUsage: true,
  isolation: {
    pid: true,
    network: 'off',
    tmp: 'private',
    ipc: true,
    hostname: 'isolated',
  },
}
