//! PostgreSQL for tests: one server per test process, one fresh database per test.
//!
//! The server is, in order: `DATABASE_URL` when set; `postgres://postgres@127.0.0.1:5432/postgres`
//! when it answers; else a private cluster started with the local PostgreSQL binaries in a
//! temporary directory (as the `postgres` user when running as root, since PostgreSQL refuses
//! root). If none can be had the test fails with a message saying what was tried: a missing
//! database is never a silently skipped test.
//!
//! Databases are named `mes_test_<pid>_<n>`; databases left by processes that no longer run
//! are dropped when the harness starts, so reruns start clean and parallel test binaries never
//! drop each other's databases.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug)]
pub struct PgServer {
    /// Admin URL ending in a database name (`.../postgres`).
    admin_url: String,
}

/// A database of one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    pub name: String,
    /// As the owner (superuser): for migrations and test setup.
    pub admin_url: String,
    /// As `mes_hub`, the role the hub runs as: neither owner nor superuser.
    pub hub_url: String,
    /// As `mes_reporting`, the read-only cross-site role of HQ reads.
    pub reporting_url: String,
}

fn replace_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

fn replace_user(url: &str, user: &str, password: &str) -> String {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .unwrap_or(url);
    let host_part = rest.split_once('@').map_or(rest, |(_, h)| h);
    format!("postgres://{user}:{password}@{host_part}")
}

async fn answers(url: &str) -> bool {
    match tokio::time::timeout(Duration::from_secs(3), PgConnection::connect(url)).await {
        Ok(Ok(mut c)) => c.execute("SELECT 1").await.is_ok(),
        _ => false,
    }
}

pub(crate) fn find_bin(name: &str) -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    from_path.or_else(|| {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
            .filter(|p| p.is_file())
            .collect();
        dirs.sort();
        dirs.pop()
    })
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL binary, as `postgres` when we are root.
fn run_pg(bin: &Path, args: &[&str]) -> Result<(), String> {
    run_as_cluster_user(bin, args).map(drop)
}

/// Runs a program as the OS user the private clusters run as (`postgres` when we are root,
/// else ourselves): tools that read a cluster's files, such as pgBackRest, must be that user.
/// Returns standard output; an error carries standard error.
pub(crate) fn run_as_cluster_user(bin: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} {args:?} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub(crate) fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// A fresh temporary directory for a cluster's files, owned by `postgres` when we are root
/// (PostgreSQL refuses to run as root).
pub(crate) fn cluster_dir(prefix: &str) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    if is_root() {
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .map_err(|e| e.to_string())?;
    }
    Ok(dir)
}

/// A cluster of its own, which a test may crash (`pg_ctl stop -m immediate`) and start again;
/// stopped and removed when dropped. The process-wide fallback server is one of these that is
/// never dropped.
#[derive(Debug)]
pub struct PrivateCluster {
    pub admin_url: String,
    dir: PathBuf,
    data: String,
    opts: String,
    log: String,
    pg_ctl: PathBuf,
    keep: bool,
}

impl PrivateCluster {
    /// `initdb` and start on a free port; `fsync` on for crash tests, off for speed.
    pub fn start(fsync: bool) -> Result<PrivateCluster, String> {
        Self::start_with(fsync, &[])
    }

    /// Like [`PrivateCluster::start`], with `settings` (name, value) written to the cluster's
    /// `postgresql.conf` before it starts: they travel with the data directory, so a base
    /// backup restored elsewhere starts with them too (WAL archiving, for one).
    pub fn start_with(fsync: bool, settings: &[(&str, &str)]) -> Result<PrivateCluster, String> {
        let initdb =
            find_bin("initdb").ok_or("initdb not found on PATH or in /usr/lib/postgresql")?;
        let pg_ctl = find_bin("pg_ctl").ok_or("pg_ctl not found")?;
        let dir = cluster_dir("mes-test-pg")?;
        let data = dir.join("data").to_string_lossy().to_string();
        run_pg(
            &initdb,
            &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        )?;
        if !settings.is_empty() {
            let mut lines = String::from("\n# Added by the test harness (tests/src/pg.rs).\n");
            for (name, value) in settings {
                lines.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
            }
            let conf = Path::new(&data).join("postgresql.conf");
            // Appending keeps the file's owner (postgres when we are root).
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&conf)
                .map_err(|e| format!("{}: {e}", conf.display()))?;
            std::io::Write::write_all(&mut f, lines.as_bytes())
                .map_err(|e| format!("{}: {e}", conf.display()))?;
        }
        Self::launch(
            dir,
            data,
            pg_ctl,
            &format!("-c fsync={}", if fsync { "on" } else { "off" }),
        )
    }

    /// Starts an existing data directory, `dir/data` (one restored from a backup, say), on
    /// `port`, `fsync` off. Stopped and `dir` removed when dropped, like every private
    /// cluster.
    pub fn start_existing(dir: PathBuf, port: u16) -> Result<PrivateCluster, String> {
        let pg_ctl = find_bin("pg_ctl").ok_or("pg_ctl not found")?;
        let data = dir.join("data").to_string_lossy().to_string();
        Self::launch_on(port, dir, data, pg_ctl, "-c fsync=off")
    }

    /// Starts the cluster in `data` on a free port with `settings` (`-c` options) added.
    fn launch(
        dir: PathBuf,
        data: String,
        pg_ctl: PathBuf,
        settings: &str,
    ) -> Result<PrivateCluster, String> {
        Self::launch_on(free_port()?, dir, data, pg_ctl, settings)
    }

    fn launch_on(
        port: u16,
        dir: PathBuf,
        data: String,
        pg_ctl: PathBuf,
        settings: &str,
    ) -> Result<PrivateCluster, String> {
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} {settings}",
            dir.to_string_lossy(),
        );
        let log = dir.join("log").to_string_lossy().to_string();
        let c = PrivateCluster {
            admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            data,
            opts,
            log,
            pg_ctl,
            keep: false,
        };
        // Dropped on failure, which removes the directory: a failed start leaves nothing, and
        // the error carries the server's log.
        if let Err(e) = c.start_again() {
            return Err(format!("{e}\nserver log {}:\n{}", c.log, c.log_tail()));
        }
        Ok(c)
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        Path::new(&self.data)
    }

    /// The directory of the Unix-domain socket (`unix_socket_directories`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// Losing the database server: stop without a checkpoint (`-m immediate`), then remove
    /// the data directory and everything else of this cluster.
    pub fn destroy(mut self) -> Result<(), String> {
        self.keep = true;
        let stopped = self.stop_immediate();
        std::fs::remove_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        match stopped {
            // A server that had already stopped (or crashed) is as good as stopped.
            Err(e) if !e.contains("Is server running?") => Err(e),
            _ => Ok(()),
        }
    }

    pub fn start_again(&self) -> Result<(), String> {
        run_pg(
            &self.pg_ctl,
            &[
                "-D", &self.data, "-o", &self.opts, "-l", &self.log, "-w", "start",
            ],
        )
    }

    /// Like a power cut for the database: no checkpoint, no clean shutdown.
    pub fn stop_immediate(&self) -> Result<(), String> {
        run_pg(&self.pg_ctl, &["-D", &self.data, "-m", "immediate", "stop"])
    }

    /// A streaming replica of this cluster on its own port: `pg_basebackup -R` (which writes
    /// `standby.signal` and the primary's connection) into a new directory, then started as a
    /// hot standby. Stopped and removed when dropped.
    pub fn start_replica(&self) -> Result<PrivateCluster, String> {
        let basebackup = find_bin("pg_basebackup").ok_or("pg_basebackup not found")?;
        let dir = cluster_dir("mes-test-replica")?;
        let data = dir.join("data").to_string_lossy().to_string();
        let primary_port = self.port().to_string();
        run_pg(
            &basebackup,
            &[
                "-D",
                &data,
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port,
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        )?;
        Self::launch(
            dir,
            data,
            self.pg_ctl.clone(),
            "-c fsync=off -c hot_standby=on -c hot_standby_feedback=on",
        )
    }

    /// The cluster's port.
    pub fn port(&self) -> u16 {
        self.admin_url
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// A test server on this cluster, for `fresh_database`.
    pub fn server(&self) -> PgServer {
        PgServer {
            admin_url: self.admin_url.clone(),
        }
    }

    /// `url` (of a database on this cluster) pointed at `other` instead: the same database,
    /// role and options on a replica of this cluster.
    pub fn url_on(&self, other: &PrivateCluster, url: &str) -> String {
        url.replace(
            &format!(":{}/", self.port()),
            &format!(":{}/", other.port()),
        )
    }

    /// Promotes this replica to a primary (`pg_ctl promote`, waiting until it accepts
    /// writes): a failover. It starts a new WAL timeline.
    pub fn promote(&self) -> Result<(), String> {
        run_pg(&self.pg_ctl, &["-D", &self.data, "-w", "promote"])
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if !self.keep {
            let _ = self.stop_immediate();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Starts a throw-away cluster for the whole test process (never stopped: the OS cleans the
/// temporary directory).
fn start_private_cluster() -> Result<String, String> {
    let mut c = PrivateCluster::start(false)?;
    c.keep = true;
    Ok(c.admin_url.clone())
}

async fn locate() -> Result<String, String> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return if answers(&url).await {
            Ok(url)
        } else {
            Err(format!("DATABASE_URL={url} does not answer"))
        };
    }
    if answers(DEFAULT_URL).await {
        return Ok(DEFAULT_URL.to_owned());
    }
    let url = tokio::task::spawn_blocking(start_private_cluster)
        .await
        .map_err(|e| e.to_string())??;
    if answers(&url).await {
        Ok(url)
    } else {
        Err(format!(
            "started a private cluster at {url} but it does not answer"
        ))
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn drop_stale(admin_url: &str) -> Result<(), sqlx::Error> {
    let mut c = PgConnection::connect(admin_url).await?;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'mes_test_%'")
            .fetch_all(&mut c)
            .await?;
    for name in names {
        let pid = name
            .strip_prefix("mes_test_")
            .and_then(|r| r.split('_').next())
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !pid_alive(p)) {
            let _ = c
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .await;
        }
    }
    Ok(())
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();

/// The test server; fails the test with what was tried if there is none.
pub async fn server() -> &'static PgServer {
    if SERVER.get().is_none() {
        let located = match locate().await {
            Ok(admin_url) => {
                if let Err(e) = drop_stale(&admin_url).await {
                    eprintln!("note: could not drop stale test databases: {e}");
                }
                Ok(PgServer { admin_url })
            }
            Err(e) => Err(e),
        };
        let _ = SERVER.set(located);
    }
    match SERVER.get() {
        Some(Ok(s)) => s,
        Some(Err(e)) => panic!(
            "no PostgreSQL for the tests: {e}. Set DATABASE_URL, run PostgreSQL on 127.0.0.1:5432, \
             or install the PostgreSQL server binaries (initdb, pg_ctl)"
        ),
        None => panic!("PostgreSQL harness not initialised"),
    }
}

static NEXT_DB: AtomicU64 = AtomicU64::new(0);
static PASSWORD_SET: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

impl PgServer {
    /// The server's admin URL (ends in `/postgres`).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// A new database with a chosen name that the harness's clean-up leaves alone (a
    /// benchmark's dataset, kept for later runs); dropped first if it exists.
    pub async fn named_database(&self, name: &str) -> TestDb {
        assert!(
            !name.starts_with("mes_test_")
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "a kept database needs a plain name outside mes_test_*"
        );
        let mut c = PgConnection::connect(&self.admin_url)
            .await
            .expect("connecting to the test server");
        c.execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .await
        .expect("dropping the old dataset");
        c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .await
            .expect("creating the dataset's database");
        self.database(name)
    }

    /// An existing database (a benchmark's dataset kept from an earlier run).
    pub fn database(&self, name: &str) -> TestDb {
        let admin_url = replace_database(&self.admin_url, name);
        TestDb {
            hub_url: replace_user(&admin_url, "mes_hub", "mes_hub"),
            reporting_url: replace_user(&admin_url, "mes_reporting", "mes_reporting"),
            admin_url,
            name: name.to_owned(),
        }
    }

    /// A new, empty database for one test.
    pub async fn fresh_database(&self) -> TestDb {
        let name = format!(
            "mes_test_{}_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed),
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        let mut c = PgConnection::connect(&self.admin_url)
            .await
            .expect("connecting to the test server");
        c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .await
            .expect("creating the test database");
        let admin_url = replace_database(&self.admin_url, &name);
        TestDb {
            hub_url: replace_user(&admin_url, "mes_hub", "mes_hub"),
            reporting_url: replace_user(&admin_url, "mes_reporting", "mes_reporting"),
            admin_url,
            name,
        }
    }
}

impl TestDb {
    /// Creates the schema as the owner and gives the hub role a password, so the hub URL
    /// works whatever the server's authentication method.
    pub async fn migrate(&self) {
        let pool = central_hub::db::connect(&self.admin_url)
            .await
            .expect("connecting as the owner");
        central_hub::db::schema::migrate(&pool)
            .await
            .expect("migrating the test database");
        // Roles are cluster-wide: set the password once per process, retrying the rare
        // "tuple concurrently updated" when another test process does the same.
        PASSWORD_SET
            .get_or_init(|| async {
                for attempt in 0..20 {
                    let set = async {
                        pool.execute("ALTER ROLE mes_hub PASSWORD 'mes_hub'")
                            .await?;
                        pool.execute("ALTER ROLE mes_reporting PASSWORD 'mes_reporting'")
                            .await
                    };
                    match set.await {
                        Ok(_) => return,
                        Err(e) if attempt < 19 => {
                            eprintln!("retrying ALTER ROLE: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("setting the hub role's password: {e}"),
                    }
                }
            })
            .await;
        pool.close().await;
    }
}

/// Waits until `replica` (a connection to it) has replayed everything `primary` had written
/// when called (at most 30 s).
pub async fn wait_replayed(primary: &sqlx::PgPool, replica: &sqlx::PgPool) {
    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(primary)
        .await
        .expect("the primary's WAL position");
    crate::hq::wait_for("the replica to replay", Duration::from_secs(30), || {
        let (pool, lsn) = (replica.clone(), lsn.clone());
        async move {
            sqlx::query_scalar::<_, bool>("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
                .bind(lsn)
                .fetch_one(&pool)
                .await
                .unwrap_or(false)
        }
    })
    .await;
}

/// Makes `replica` an asynchronous replica that has fallen behind: its WAL receiver is cut
/// off (`primary_conninfo = ''`), and this waits until `primary` has no replica any more. What
/// the primary writes from then on, a failover to this replica loses.
pub async fn cut_off(replica: &sqlx::PgPool, primary: &sqlx::PgPool) {
    replica
        .execute("ALTER SYSTEM SET primary_conninfo = ''")
        .await
        .expect("ALTER SYSTEM on the replica");
    replica
        .execute("SELECT pg_reload_conf()")
        .await
        .expect("reloading the replica's configuration");
    crate::hq::wait_for(
        "the primary to lose its replica",
        Duration::from_secs(30),
        || {
            let pool = primary.clone();
            async move {
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_stat_replication")
                    .fetch_one(&pool)
                    .await
                    .is_ok_and(|n| n == 0)
            }
        },
    )
    .await;
}
