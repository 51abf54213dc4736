//! Time `Db::send` to a 1,000-device group, without HTTP or WebSocket.
//! `cargo run --release -p sitrep-server --example dbsend`

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("sitrep-dbsend-{}", std::process::id()));
    let db = sitrep_server::Db::open(&dir)?;
    let gid = vec![1u8; 16];
    db.create_group(&gid, "d0000", 0, &[])
        .map_err(|e| format!("{e:?}"))?;
    let conn = rusqlite::Connection::open(dir.join("sitrep.db"))?;
    for i in 1..1000 {
        conn.execute(
            "INSERT INTO memberships (group_id, device_id, from_seq) VALUES (?1, ?2, 0)",
            rusqlite::params![gid, format!("d{i:04}")],
        )?;
    }
    let mut times = Vec::new();
    for i in 0..200 {
        let t = std::time::Instant::now();
        db.send(
            "d0000",
            &gid,
            &format!("{i:032x}"),
            vec![7u8; 300],
            0,
            |_, _, _| Ok(()),
            |_| {},
        )
        .map_err(|e| format!("{e:?}"))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "Db::send to 999 recipients: p50 {:.2} ms p90 {:.2} ms",
        times[100], times[180]
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
