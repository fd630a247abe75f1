// Development configuration: run from the repository root as an ordinary
// user. bb_worker (or `rbe-runner exec`) connects to run/runner.sock and
// prepares actions under run/build; both paths are relative to the
// directory the runner is started in.
{
  buildDirectoryPath: 'run/build',
  grpcServers: [{
    listenPaths: ['run/runner.sock'],
    authenticationPolicy: { allow: {} },
  }],
}
