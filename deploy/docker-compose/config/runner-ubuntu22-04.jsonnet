// The runner of deploy/docker-compose/docker-compose.yml: bb_worker
// prepares actions in /worker/build and connects to /worker/runner, both
// on the volume the two containers share.
{
  buildDirectoryPath: '/worker/build',
  grpcServers: [{
    listenPaths: ['/worker/runner'],
    authenticationPolicy: { allow: {} },
  }],
  cleanTemporaryDirectories: ['/tmp'],
  setTmpdirEnvironmentVariable: true,
  readinessCheckingPathnames: ['/worker/build'],
  terminationGracePeriod: '10s',
}
