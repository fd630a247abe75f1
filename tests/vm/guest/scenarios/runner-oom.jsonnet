// The runner-oom scenario's configuration: a Unix socket, and a build
// directory on the guest's own root file system.
{
  buildDirectoryPath: '/build',
  grpcServers: [{
    listenPaths: ['/run/runner.sock'],
    authenticationPolicy: { allow: {} },
  }],
}
