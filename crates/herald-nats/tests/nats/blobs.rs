//! Blobs in the JetStream object store (`herald_nats::blobs`) through the
//! `object_store` API the server's blob service uses: multipart uploads
//! land whole or leave nothing, a rename keeps the bytes, ranged reads,
//! listing, deletion, and a second node reads what the first wrote.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, PutPayload, WriteMultipart,
};

use crate::{Server, connect, nats_available};

/// Bytes of a blob of `size` with a pattern that spots misplaced chunks.
fn pattern(size: usize) -> Vec<u8> {
    (0..size)
        .map(|index| u8::try_from((index * 7 + index / 131_072) % 251).unwrap())
        .collect()
}

async fn read(store: &dyn ObjectStore, path: &Path, range: Option<GetRange>) -> Vec<u8> {
    let options = GetOptions {
        range,
        ..GetOptions::default()
    };
    let result = store.get_opts(path, options).await.unwrap();
    let chunks: Vec<Bytes> = result.into_stream().try_collect().await.unwrap();
    chunks.concat()
}

/// Messages left in the blob bucket's stream.
async fn messages_in_bucket(url: &str) -> u64 {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("OBJ_herald-blobs").await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_written_whole_or_not_at_all_and_shared_by_every_node() {
    if !nats_available() {
        return;
    }
    let server = Server::start();
    let first = Arc::new(connect(&server.url).await.blobs().await.unwrap());
    let second = connect(&server.url).await.blobs().await.unwrap();

    // A multipart upload of parts that are not chunk-aligned, written
    // with parts in flight at once, then renamed as the blob service does.
    let bytes = pattern(3 * 1024 * 1024 + 12_345);
    let temp = Path::from("tmp/upload-1");
    let upload = first.put_multipart(&temp).await.unwrap();
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 1_000_000);
    for piece in bytes.chunks(300_001) {
        writer.wait_for_capacity(2).await.unwrap();
        writer.write(piece);
    }
    writer.finish().await.unwrap();
    let blob = Path::from("sha256/abc");
    first.rename(&temp, &blob).await.unwrap();
    assert!(matches!(
        first.head(&temp).await,
        Err(object_store::Error::NotFound { .. })
    ));

    // The other node reads it: whole, ranged, its size.
    assert_eq!(second.head(&blob).await.unwrap().size, bytes.len() as u64);
    assert_eq!(read(&second, &blob, None).await, bytes);
    for range in [0..10, 131_070..131_080, 1_000_000..2_500_000] {
        let got = read(&second, &blob, Some(GetRange::Bounded(range.clone()))).await;
        assert_eq!(
            got,
            bytes[usize::try_from(range.start).unwrap()..usize::try_from(range.end).unwrap()]
        );
    }
    let tail = read(&second, &blob, Some(GetRange::Suffix(5))).await;
    assert_eq!(tail, bytes[bytes.len() - 5..]);

    // Renaming onto an existing name replaces it and frees its chunks.
    second
        .put(
            &Path::from("tmp/upload-2"),
            PutPayload::from(b"small".to_vec()),
        )
        .await
        .unwrap();
    second
        .rename(&Path::from("tmp/upload-2"), &blob)
        .await
        .unwrap();
    assert_eq!(read(&*first, &blob, None).await, b"small");
    let listed: Vec<String> = first
        .list(None)
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed, vec!["sha256/abc".to_owned()]);

    // Uploads that fail or are dropped leave no chunk behind.
    let before = messages_in_bucket(&server.url).await;
    let mut aborted = first
        .put_multipart(&Path::from("tmp/aborted"))
        .await
        .unwrap();
    aborted
        .put_part(PutPayload::from(pattern(400_000)))
        .await
        .unwrap();
    aborted.abort().await.unwrap();
    let mut dropped = first
        .put_multipart(&Path::from("tmp/dropped"))
        .await
        .unwrap();
    dropped
        .put_part(PutPayload::from(pattern(300_000)))
        .await
        .unwrap();
    drop(dropped);
    let deadline = Instant::now() + Duration::from_secs(10);
    while messages_in_bucket(&server.url).await != before {
        assert!(
            Instant::now() < deadline,
            "chunks of unfinished uploads left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        first.head(&Path::from("tmp/aborted")).await,
        Err(object_store::Error::NotFound { .. })
    ));

    // Deleted, it is gone for every node.
    first.delete(&blob).await.unwrap();
    assert!(matches!(
        second.head(&blob).await,
        Err(object_store::Error::NotFound { .. })
    ));
    assert!(matches!(
        second.get(&blob).await,
        Err(object_store::Error::NotFound { .. })
    ));
    let left: Vec<_> = second.list(None).collect().await;
    assert!(left.is_empty(), "{left:?}");
}
