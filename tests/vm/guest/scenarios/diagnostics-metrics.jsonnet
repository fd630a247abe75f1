// Configuration of the diagnostics-metrics scenario: action cgroups with
// sampling (as action-cgroups.jsonnet), plus the diagnostics HTTP server
// on the guest's loopback.
{
  buildDirectoryPath: '/build',
  grpcServers: [{
    listenPaths: ['/run/runner.sock'],
    authenticationPolicy: { allow: {} },
  }],
  actionCgroups: {},
  sampleCgroupResourceUsage: true,
  global: {
    diagnosticsHttpServer: {
      httpServers: [{
        listenAddresses: ['127.0.0.1:9980'],
        authenticationPolicy: { allow: {} },
      }],
      enablePrometheus: true,
    },
  },
}
