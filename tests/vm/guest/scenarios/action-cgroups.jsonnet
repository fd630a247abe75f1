// Configuration of the action-cgroups-* scenarios: every action in a cgroup
// of its own below the cgroup the runner starts in, and each action's usage
// measured in that cgroup.
{
  buildDirectoryPath: '/build',
  grpcServers: [{
    listenPaths: ['/run/runner.sock'],
    authenticationPolicy: { allow: {} },
  }],
  actionCgroups: {},
  sampleCgroupResourceUsage: true,
}
