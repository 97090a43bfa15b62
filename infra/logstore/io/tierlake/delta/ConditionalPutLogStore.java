package io.tierlake.delta;

import io.delta.storage.S3SingleDriverLogStore;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Iterator;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FSDataOutputStreamBuilder;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.s3a.RemoteFileChangedException;

/**
 * Delta's log store for S3 stores that honour {@code If-None-Match: *} on PUT (Ceph RGW 16.2, AWS S3 since 2024).
 *
 * <p>Delta needs one thing from storage that S3 did not give before conditional writes: creating
 * {@code _delta_log/<version>.json} must fail when the file exists, or two writers can both "commit" one version and
 * one commit is lost. {@link S3SingleDriverLogStore} only checks within one JVM (an exists probe, then a plain PUT), so
 * two drivers, or a Spark driver and delta-rs, can overwrite each other. Here every new log entry is created with a
 * conditional PUT (hadoop-aws's {@code fs.option.create.conditional.overwrite}), so the object store decides which
 * writer owns a version. The loser gets {@link java.nio.file.FileAlreadyExistsException}, which Delta answers with its
 * own conflict check and, when the transactions do not conflict, a retry at the next version. A refusal of an entry
 * that already holds this write's own bytes (the SDK retried a PUT that had landed) is this write's success, not a
 * lost race: otherwise Delta would commit the same append again at the next version. delta-rs does the same
 * with its {@code conditional_put} option, so Spark and delta-rs writers are arbitrated by one rule.
 *
 * <p>Fences: the driver that holds a table's writer lease says after each confirmed renewal how long it may still
 * commit ({@link #fence}); a write under a fenced prefix after that moment is refused. The check runs right before
 * the PUT, after Delta has planned its commit, so a driver paused (SIGSTOP, a long GC) past its lease and then resumed
 * cannot finish a commit it had started; the JVM's monotonic clock keeps running while the process is stopped.
 *
 * <p>Overwrites (checkpoints, {@code _last_checkpoint}) and reads/listing are the parent's.
 */
public class ConditionalPutLogStore extends S3SingleDriverLogStore {

  /** hadoop-aws (3.4.2+) create-file option: PUT with {@code If-None-Match: *}. */
  static final String CONDITIONAL_CREATE = "fs.option.create.conditional.overwrite";

  /** Log entries this JVM's writers lost to another writer (the object store answered 412). */
  private static final AtomicLong LOST_RACES = new AtomicLong();

  /** Table path prefix -> System.nanoTime() after which its commits are refused. */
  private static final Map<String, Long> FENCES = new ConcurrentHashMap<>();

  public ConditionalPutLogStore(Configuration initHadoopConf) {
    super(initHadoopConf);
  }

  /** Commits under {@code prefix} (e.g. {@code s3a://lake/silver/ev/}) are allowed for the next {@code millis} ms. */
  public static void fence(String prefix, long millis) {
    FENCES.put(prefix, System.nanoTime() + Math.max(0L, millis) * 1_000_000L);
  }

  /** How many log entries this JVM's writers lost to another writer since it started (the object store's 412s). */
  public static long lostRaces() {
    return LOST_RACES.get();
  }

  /** Forget the fence of {@code prefix} (the writer no longer holds a lease there). */
  public static void unfence(String prefix) {
    FENCES.remove(prefix);
  }

  static void checkFence(Path path) throws IOException {
    String target = path.toString();
    long now = System.nanoTime();
    for (Map.Entry<String, Long> fence : FENCES.entrySet()) {
      if (target.startsWith(fence.getKey()) && now - fence.getValue() >= 0) {
        throw new IOException(
            "commit to " + target + " refused: this driver's writer lease for " + fence.getKey()
                + " is unconfirmed (the driver was paused or cut off from the object store), so another driver"
                + " may own the table now");
      }
    }
  }

  @Override
  public void write(Path path, Iterator<String> actions, Boolean overwrite, Configuration hadoopConf)
      throws IOException {
    if (overwrite) {
      checkFence(path);
      super.write(path, actions, true, hadoopConf);
      return;
    }
    // The whole entry is built before the stream opens: S3A uploads on close, so an error while the actions are
    // still being produced must not publish half an entry.
    byte[] entry = encode(actions);
    FileSystem fs = path.getFileSystem(hadoopConf);
    checkFence(path); // the last moment before the PUT
    try {
      FSDataOutputStreamBuilder<?, ?> builder = fs.createFile(path).overwrite(false);
      builder.must(CONDITIONAL_CREATE, true);
      FSDataOutputStream out = builder.build();
      out.write(entry);
      out.close();
    } catch (IOException e) {
      if (lostTheRace(e)) {
        if (holds(fs, path, entry)) {
          return; // our own PUT had landed and its answer was lost: the SDK's retry met it, not another writer
        }
        LOST_RACES.incrementAndGet();
        throw new java.nio.file.FileAlreadyExistsException(path.toString());
      }
      throw e;
    }
  }

  /**
   * Whether the entry at {@code path} is byte for byte {@code entry}. Delta's commit info carries the transaction's
   * own id and time, so another writer's entry never matches; an unreadable entry counts as another writer's.
   */
  static boolean holds(FileSystem fs, Path path, byte[] entry) {
    try (FSDataInputStream in = fs.open(path)) {
      return Arrays.equals(in.readAllBytes(), entry);
    } catch (IOException unreadable) {
      return false;
    }
  }

  @Override
  public Boolean isPartialWriteVisible(Path path, Configuration hadoopConf) {
    return false; // a PUT is all or nothing
  }

  static byte[] encode(Iterator<String> actions) throws IOException {
    ByteArrayOutputStream buffer = new ByteArrayOutputStream();
    while (actions.hasNext()) {
      buffer.write((actions.next() + "\n").getBytes(StandardCharsets.UTF_8));
    }
    return buffer.toByteArray();
  }

  /** A 412 (the entry exists) or the create-time existence probe's answer, anywhere in the cause chain. */
  static boolean lostTheRace(Throwable error) {
    for (Throwable e = error; e != null; e = e.getCause()) {
      if (e instanceof RemoteFileChangedException
          || e instanceof org.apache.hadoop.fs.FileAlreadyExistsException
          || e instanceof java.nio.file.FileAlreadyExistsException) {
        return true;
      }
      String message = String.valueOf(e.getMessage());
      if (message.contains("PreconditionFailed") || message.contains("Status Code: 412")) {
        return true;
      }
    }
    return false;
  }
}
