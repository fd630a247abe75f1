// Configuration of the isolation-oom scenario (issue 26): every isolation
// option, every action in a cgroup of its own with a memory limit, and the
// usage measured in that cgroup.
{
  buildDirectoryPath: '/build',
  grpcServers: [{
    listenPaths: ['/run/runner.sock'],
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
