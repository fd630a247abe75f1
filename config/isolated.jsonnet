// The development configuration with every isolation option (see
// docs/isolation.md): run from the repository root as root, since the
// namespaces need CAP_SYS_ADMIN. Actions reach it on run/isolated.sock and
// are prepared under run/build, like the development runner's.
{
  buildDirectoryPath: 'run/build',
  grpcServers: [{
    listenPaths: ['run/isolated.sock'],
    authenticationPolicy: { allow: {} },
  }],
  isolation: {
    pid: true,
    network: 'off',
    tmp: 'private',
    ipc: true,
    hostname: 'localhost',
  },
}
