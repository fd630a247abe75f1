// A typical production bb_runner configuration, written for upstream's
// bb_runner; rbe-runner decodes it unchanged. It runs beside bb_worker in
// one pod: bb_worker prepares actions in /worker/build and reaches the
// runner through the Unix socket /worker/runner on a shared volume.
//
// POD_NAME is set by Kubernetes (env valueFrom fieldRef metadata.name);
// every environment variable is available through std.extVar.
local podName = std.extVar('POD_NAME');

{
  buildDirectoryPath: '/worker/build',
  grpcServers: [{
    listenPaths: ['/worker/runner'],
    authenticationPolicy: { allow: {} },
    // bb_worker and bb_runner are separate containers that Kubernetes
    // stops in no particular order: let in-flight actions finish.
    stopGracefully: true,
  }],

  // Empty /tmp between actions, and point TMPDIR into the action's own
  // temporary directory so that well-behaved tools never touch /tmp.
  cleanTemporaryDirectories: ['/tmp'],
  setTmpdirEnvironmentVariable: true,

  // Stop taking work if the build volume disappears.
  readinessCheckingPathnames: ['/worker/build'],

  global: {
    // Sockets and files the runner creates must be usable by bb_worker.
    setUmask: { umask: std.parseOctal('022') },
    // Options every Buildbarn binary has; rbe-runner accepts logPaths and
    // says once at startup that it does not act on it.
    logPaths: ['/worker/log/%s-runner.log' % podName],
    // /metrics, /-/healthy and /-/ready on port 9987 of the loopback
    // interface: reachable from this host (in a pod, from its containers)
    // only. Whoever reaches the port can read the metrics and probe
    // readiness; it controls nothing. For Prometheus to scrape it from
    // elsewhere, bind ':9987' where a network boundary limits who can
    // connect (deploy/kubernetes does so: the pod network is the boundary).
    diagnosticsHttpServer: {
      httpServers: [{
        listenAddresses: ['127.0.0.1:9987'],
        authenticationPolicy: { allow: {} },
      }],
      enablePrometheus: true,
      enablePprof: true,
    },
  },
}
