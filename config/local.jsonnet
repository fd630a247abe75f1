// Development configuration: run from the repository root as an ordinary
// user. bb_worker (or `rbe-runner exec`) connects to run/runner.sock and
// prepares actions under run/build; the runner's events are kept in the
// journal run/events.jsonl, for `watch` and `report`. All paths are
// relative to the directory the runner is started in.
{
  buildDirectoryPath: 'run/build',
  grpcServers: [{
    listenPaths: ['run/runner.sock'],
    authenticationPolicy: { allow: {} },
  }],
  events: {
    journalPath: 'run/events.jsonl',
  },
}
