//! Running one test body on both of the runner's spawn paths.

/// How the runner under test creates actions' processes.
#[derive(Clone, Copy, Debug)]
pub enum SpawnPath {
    /// Through its spawn server, as it starts.
    SpawnServer,
    /// By the runner itself, its spawn server killed (as an operator
    /// might).
    Runner,
}

/// Generates, for each `async fn NAME(test: &str, path: SpawnPath)`, a
/// module `NAME` with the tests `with_the_spawn_server` and
/// `without_the_spawn_server`. A test binary using it declares
/// `#[macro_use] mod common;`.
#[allow(unused_macros)]
macro_rules! on_both_spawn_paths {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn with_the_spawn_server() {
                super::$name(
                    concat!(stringify!($name), "::with_the_spawn_server"),
                    super::SpawnPath::SpawnServer,
                )
                .await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn without_the_spawn_server() {
                super::$name(
                    concat!(stringify!($name), "::without_the_spawn_server"),
                    super::SpawnPath::Runner,
                )
                .await;
            }
        }
    )* };
}
