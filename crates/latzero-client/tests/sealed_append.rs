//! An encrypted pool's stream append that the server finds sealed before the stream's newest
//! record (`STALE_RECORD`: another writer's append landed first) is sealed again, with a later
//! seq, and sent again, up to 8 tries in all. A raw listener stands in for the server, so which
//! tries are refused is certain rather than left to a race between writers.

use latzero_client::{Client, ErrorCode, PoolKeys, Verifiers, generate_pool_keys};
use latzero_proto::frame::{Frame, FrameCodec, encode_json};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::codec::Decoder;

#[tokio::test]
async fn an_overtaken_append_is_sealed_again_up_to_eight_tries() {
    let (texts, v) = generate_pool_keys("vault", 1);
    let write = Verifiers::b64(&v.write);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The seq of each append's record, in the order they came.
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let (mut buf, mut codec, mut seqs) = (bytes::BytesMut::new(), FrameCodec::default(), vec![]);
        loop {
            let frame = loop {
                if let Some(f) = codec.decode(&mut buf).unwrap() {
                    break f;
                }
                if s.read_buf(&mut buf).await.unwrap() == 0 {
                    return seqs;
                }
            };
            let f: Value = serde_json::from_slice(frame.json()).unwrap();
            let id = f["id"].clone();
            let answer = match f["action"].as_str().unwrap() {
                "handshake" => json!({"action": "handshake_ack", "in_reply_to": id, "pools": [], "triggers": []}),
                "pool_challenge" => json!({"action": "pool_challenge", "in_reply_to": id, "pool": "vault",
                    "generation": 1, "nonce": Verifiers::b64(&[7; 32]), "write_verifiers": {"1": write}}),
                "block_attach" => json!({"action": "block_attached", "in_reply_to": id, "mode": "write",
                    "block": {"pool": "vault", "block_id": "s", "type": "stream", "size": 65536}}),
                "block_write" => {
                    let Frame::Binary { body, .. } = frame else {
                        panic!("an append carries its record")
                    };
                    seqs.push(u64::from_be_bytes(body[8..16].try_into().unwrap()));
                    if seqs.len() == 3 {
                        json!({"action": "block_written", "in_reply_to": id, "index": 7, "version": 8})
                    } else {
                        json!({"action": "error", "in_reply_to": id, "code": "STALE_RECORD",
                            "message": "sealed before the stream's newest record"})
                    }
                }
                _ => json!({"action": "ack", "in_reply_to": id}),
            };
            s.write_all(&encode_json(answer.to_string().as_bytes())).await.unwrap();
        }
    });
    let client = Client::connect(&format!("latzero://writer@{addr}")).await.unwrap();
    let vault = client
        .encrypted_pool("vault", PoolKeys::parse("vault", &texts).unwrap())
        .await
        .unwrap();
    let block = client.attach_block_with("vault", "s", None, false).await.unwrap();
    // Refused twice, then taken: the third try lands.
    assert_eq!(vault.append(&block, b"again").await.unwrap(), (7, 8));
    // Refused every time: it gives up after 8 tries with the server's code.
    let e = vault.append(&block, b"never").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::StaleRecord), "{e}");
    drop((vault, block, client));
    let seqs = server.await.unwrap();
    assert_eq!(seqs.len(), 3 + 8, "{seqs:?}");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "each try sealed again, later: {seqs:?}"
    );
}
