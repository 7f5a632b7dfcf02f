//! Shared memory: a "camera" app writes frames into a memory block through its own mapping; a
//! "viewer" app watches the block and reads each frame through its own mapping of the same
//! memory. No frame crosses the server: it carries only the version notices.
//!
//! ```sh
//! cargo run -p latzero-cli --release -- start          # terminal 1: the server
//! cargo run -p latzero-examples --bin memory           # terminal 2: this program
//! ```
//!
//! Both apps connect to the default endpoint (the Unix socket of `$LATZERO_DATA_DIR`, default
//! ~/.latzero, else TCP 127.0.0.1:45227) and join pool "demo".

use latzero_client::{BlockEvent, BlockOptions, Client};

const FRAME: u64 = 1 << 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let camera = Client::connect("latzero://camera?pools=demo").await?;
    let viewer = Client::connect("latzero://viewer?pools=demo").await?;
    // A block of this name left by an earlier run that was interrupted goes first.
    let _ = camera.delete_block("demo", "frame").await;
    let frame = camera
        .create_block("demo", "frame", BlockOptions::binary(FRAME).writers(["camera"]))
        .await?;
    let view = viewer.attach_block("demo", "frame").await?;
    println!(
        "block demo/frame: {FRAME} bytes, mapped by the camera: {}, by the viewer: {}",
        frame.is_mapped(),
        view.is_mapped()
    );
    let mut watch = view.watch(None).await?;
    for n in 1..=5u8 {
        // Fill the frame in place, then tell watchers (write_with does both).
        let version = frame.write_with(0, FRAME, |bytes| bytes.fill(n)).await?;
        let seen = loop {
            match watch.next().await {
                Some(BlockEvent::Changed { version: v, .. }) if v >= version => break v,
                Some(_) => continue,
                None => anyhow::bail!("the watch ended"),
            }
        };
        // Read in place: the closure sees the viewer's mapping of the same memory.
        let (sum, at) = view.read_with(0, FRAME, |bytes| bytes.iter().map(|&b| u64::from(b)).sum::<u64>())?;
        println!("frame {n}: version {seen}, read at version {at}, byte sum {sum}");
    }
    drop(watch);
    frame.delete().await?;
    println!("deleted demo/frame");
    Ok(())
}
