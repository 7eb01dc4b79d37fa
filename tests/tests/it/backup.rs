//! The backup and restore procedures of docs/operations.md, run for real: the edge script
//! against the agent binary and its DuckDB buffer, the ClickHouse script against either
//! generation (18.16: FREEZE, copy, ATTACH PARTITION; 26.x: BACKUP to a disk, RESTORE into a
//! staging database, ATTACH PARTITION FROM it), each ending with the data read back through
//! the product.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sightline_edge_agent::buffer::worker::BUFFER_FILE;
use sightline_shared::Encoding;
use sightline_tests::fixtures::poll_until;
use sightline_tests::{ClickHouseServer, Servers, Stack};

use crate::edge::{buffer_contents, cameras_toml, spawn_agent, wait_status, write_agent_config};
use crate::{known_events, repo};

/// Runs one of the repository's scripts to the end (on a blocking thread: the in-process
/// services share the runtime) and shows its stderr.
async fn script(path: &str, args: &[&str], envs: &[(&str, String)]) -> Output {
    let mut command = Command::new(repo().join(path));
    command.args(args).envs(envs.iter().map(|(k, v)| (k, v)));
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the script's thread")
        .unwrap_or_else(|e| panic!("run {path}: {e}"));
    eprintln!(
        "{path} {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// How many entries a directory has (none if it does not exist).
fn entries(dir: &Path) -> std::io::Result<usize> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

fn text(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The synthetic camera's config: 50 events/s, until `max` if set. (The agent exits once
/// its cameras are done and its backlog is published, or the drain timeout has passed.)
fn camera(max: Option<u64>) -> String {
    cameras_toml(&[("door", 50.0, max)])
}

/// Every event id in the buffer file and how many are unsent (the agent must be stopped).
fn buffered(data: &Path) -> anyhow::Result<(BTreeSet<String>, u64)> {
    let (events, unsent) = buffer_contents(data)?;
    Ok((
        events.iter().map(|e| e.event_id.to_string()).collect(),
        unsent,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_backup_taken_offline_is_restored_on_a_new_disk_and_delivered_once()
-> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack.nats.kill();
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let archive = tmp.path().join("edge-backup.tar.gz");
    let log = tmp.path().join("agent.log");
    let (config, base) =
        write_agent_config(tmp.path(), &stack.nats.url(), "edge-bak", &camera(None))?;
    // Offline, so a stop does not wait long for a link that is not there.
    let original = std::fs::read_to_string(&config)?;
    let patched = original.replace("drain_timeout_secs = 60", "drain_timeout_secs = 1");
    anyhow::ensure!(
        patched != original,
        "the agent config has no drain_timeout_secs = 60"
    );
    std::fs::write(&config, patched)?;
    let mut agent = spawn_agent(&config, &log)?;
    let http = reqwest::Client::new();
    wait_status(
        &http,
        &base,
        "100 events buffered",
        Duration::from_secs(60),
        |s| s["buffer"]["unsent"].as_u64() >= Some(100),
    )
    .await?;

    // While the agent has the buffer open, the backup refuses and writes nothing.
    let args = ["--data-dir", text(&data), "--no-service"];
    let refused = script(
        "deploy/edge/backup.sh",
        &[&["backup", text(&archive)], &args[..]].concat(),
        &[],
    )
    .await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!("open by pid {}", agent.id())),
        "{stderr}"
    );
    assert!(!archive.exists());

    agent.terminate().await?;
    let (committed, unsent) = buffered(&data)?;
    assert!(committed.len() >= 100);
    assert_eq!(
        unsent as usize,
        committed.len(),
        "offline: nothing was sent"
    );
    let backed_up = script(
        "deploy/edge/backup.sh",
        &[&["backup", text(&archive)], &args[..]].concat(),
        &[],
    )
    .await;
    assert!(backed_up.status.success());
    assert!(archive.metadata()?.len() > 0);

    // The disk is replaced: the data directory now holds something else, which restore
    // keeps aside rather than deleting.
    std::fs::remove_dir_all(&data)?;
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("from-the-new-disk"), "x")?;
    let restored = script(
        "deploy/edge/backup.sh",
        &[&["restore", text(&archive)], &args[..]].concat(),
        &[],
    )
    .await;
    assert!(restored.status.success());
    let aside: Vec<PathBuf> = std::fs::read_dir(tmp.path())?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    let aside = aside
        .iter()
        .find(|p| text(p).contains("data.before-restore-"))
        .expect("the previous data directory kept aside");
    assert!(aside.join("from-the-new-disk").exists());
    assert_eq!(buffered(&data)?, (committed.clone(), unsent));

    // Back online, with a camera that makes nothing new: the agent publishes what the
    // backup held and exits once it is all acknowledged (within the 60 s drain timeout).
    std::fs::write(&config, original.replace(&camera(None), &camera(Some(0))))?;
    stack.nats.start_again()?;
    let mut agent = spawn_agent(&config, &log)?;
    let exit = agent.wait_exit(Duration::from_secs(120)).await?;
    assert!(exit.success(), "the agent exited with {exit}");
    let expected = committed.len();
    let found = stack
        .wait_for_events("edge=edge-bak&limit=1000", expected)
        .await?;
    let ids: Vec<String> = found.iter().map(|e| e.event_id.to_string()).collect();
    assert_eq!(ids.len(), expected, "an event is there twice");
    assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), committed);
    assert_eq!(buffered(&data)?.1, 0, "all marked sent");

    // Restoring an archive that is not an edge backup is refused before anything moves.
    let junk = tmp.path().join("junk.tar.gz");
    std::fs::write(&junk, b"not a tarball")?;
    let refused = script(
        "deploy/edge/backup.sh",
        &[&["restore", text(&junk)], &args[..]].concat(),
        &[],
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not an edge backup"),
        "refused for the wrong reason"
    );
    assert!(data.join(BUFFER_FILE).exists());
    assert_eq!(
        buffered(&data)?,
        (committed.clone(), 0),
        "the restored buffer is untouched"
    );
    stack.stop().await
}

/// Counts that must survive a backup and restore: rows per table through FINAL (the query
/// path's view) and as stored (a part attached twice shows there), the rollup's sums and the
/// applied migrations.
async fn fingerprint(clickhouse: &ClickHouseServer) -> anyhow::Result<String> {
    clickhouse
        .query(
            "SELECT (SELECT count() FROM sightline.events FINAL), (SELECT count() FROM sightline.events_by_id FINAL), \
             (SELECT count() FROM sightline.detections FINAL), \
             (SELECT count() FROM sightline.events), (SELECT count() FROM sightline.events_by_id), \
             (SELECT count() FROM sightline.detections), \
             (SELECT countMerge(detections) FROM sightline.detections_hourly), \
             (SELECT groupArray(version) FROM (SELECT DISTINCT version FROM sightline.schema_migrations ORDER BY version)) \
             FORMAT TabSeparated",
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_backup_restores_on_a_new_server_and_never_doubles_live_data()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let events = known_events("edge-ch", "lobby", 300);
    stack.publish(events, Encoding::Bincode).await?;
    stack
        .wait_for_events("edge=edge-ch&limit=1000", 300)
        .await?;
    // The API reads `events`; ClickHouse makes an INSERT's rows visible there before it has
    // pushed them to the views' tables, one view after the other (18.16 under load showed
    // `events` full and `events_by_id` still empty). Wait until every view has caught up.
    let caught_up = |f: &String| {
        let counts: Vec<&str> = f.split('\t').collect();
        counts.len() == 8
            && counts[0] == counts[1]
            && counts[2] == counts[5]
            && counts[5] == counts[6]
    };
    let before = match poll_until(
        Duration::from_secs(30),
        || fingerprint(&stack.clickhouse),
        caught_up,
    )
    .await?
    {
        Ok(before) => before,
        Err(last) => anyhow::bail!("the views never caught up with events: {last}"),
    };
    assert!(before.starts_with("300\t300\t"), "{before}");
    let days = stack
        .clickhouse
        .query("SELECT uniqExact(toYYYYMMDD(captured_at)) FROM sightline.events")
        .await?;

    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("ch-backup");
    let port = |c: &ClickHouseServer| vec![("CLICKHOUSE_URL", c.url())];
    let out = script(
        "deploy/clickhouse/backup.sh",
        &["backup", text(&dir)],
        &port(&stack.clickhouse),
    )
    .await;
    assert!(out.status.success());
    // The server's copy is removed again: no disk space stays pinned.
    match stack.clickhouse.servers() {
        Servers::Debian => {
            let path = stack
                .clickhouse
                .query("SELECT data_path FROM system.tables WHERE database = 'sightline' AND name = 'events'")
                .await?;
            let shadow = Path::new(&path).join("../../../shadow");
            let left: Vec<_> = std::fs::read_dir(&shadow)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()?;
            assert_eq!(left, ["increment.txt"], "{}", shadow.display());
            assert!(std::fs::read_dir(dir.join("parts/events"))?.count() >= 1);
            assert_eq!(std::fs::read_to_string(dir.join("method"))?, "freeze\n");
        }
        Servers::Modern => {
            let backups = stack.clickhouse.backups_dir();
            assert_eq!(entries(&backups)?, 0, "{}", backups.display());
            assert!(std::fs::read_dir(dir.join("backup/data/sightline/events"))?.count() >= 1);
            assert_eq!(std::fs::read_to_string(dir.join("method"))?, "backup\n");
        }
    }
    // A second backup into the same directory is refused.
    let again = script(
        "deploy/clickhouse/backup.sh",
        &["backup", text(&dir)],
        &port(&stack.clickhouse),
    )
    .await;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists: back up into a new directory"),
        "refused for the wrong reason"
    );

    // A new, empty server: the schema and every table's data come back, rollups included.
    let fresh = ClickHouseServer::start()?;
    let out = script(
        "deploy/clickhouse/backup.sh",
        &["restore", text(&dir)],
        &port(&fresh),
    )
    .await;
    assert!(out.status.success());
    assert_eq!(fingerprint(&fresh).await?, before);
    let views = fresh
        .query("SELECT count() FROM system.tables WHERE database = 'sightline' AND engine = 'MaterializedView'")
        .await?;
    assert_eq!(views, "4");

    // Restoring again over the live data keeps every partition as it is: nothing doubles.
    let out = script(
        "deploy/clickhouse/backup.sh",
        &["restore", text(&dir)],
        &port(&fresh),
    )
    .await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("kept sightline.events partition"));
    assert_eq!(fingerprint(&fresh).await?, before);

    // A partition lost on the live server comes back with --replace.
    let newest = fresh
        .query("SELECT toString(max(toYYYYMMDD(captured_at))) FROM sightline.events")
        .await?;
    fresh
        .query(&format!(
            "ALTER TABLE sightline.events DROP PARTITION ID '{newest}'"
        ))
        .await?;
    assert_ne!(fingerprint(&fresh).await?, before);
    let out = script(
        "deploy/clickhouse/backup.sh",
        &["restore", text(&dir), "--replace"],
        &port(&fresh),
    )
    .await;
    assert!(out.status.success());
    assert_eq!(fingerprint(&fresh).await?, before);
    assert_eq!(
        fresh
            .query("SELECT uniqExact(toYYYYMMDD(captured_at)) FROM sightline.events")
            .await?,
        days
    );
    // Restoring leaves nothing behind: no staging database, nothing on the backups disk.
    assert_eq!(
        fresh
            .query("SELECT count() FROM system.databases WHERE name LIKE '_sightline_restore%'")
            .await?,
        "0"
    );
    if fresh.servers() == Servers::Modern {
        assert_eq!(entries(&fresh.backups_dir())?, 0);
    }
    stack.stop().await
}
