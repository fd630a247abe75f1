// Configuration of the action-limits scenario: every action in a cgroup of
// its own with per-action limits, measured in that cgroup.
{
  buildDirectoryPath: '/build',
  grpcServers: [{
    listenPaths: ['/run/runner.sock'],
    authenticationPolicy: { allow: {} },
  }],
  actionCgroups: {
    memoryMax: '64M',
    pidsMax: 32,
    cpuMax: '0.5',
  },
  sampleCgroupResourceUsage: true,
}
