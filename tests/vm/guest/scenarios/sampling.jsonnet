// Configuration of the sampling-* scenarios: a Unix socket, a build
// directory on the guest's own root file system, and per-action cgroup
// sampling of the cgroup the runner starts in.
{
  buildDirectoryPath: '/build',
  grpcServers: [{
    listenPaths: ['/run/runner.sock'],
    authenticationPolicy: { allow: {} },
  }],
  sampleCgroupResourceUsage: true,
}
