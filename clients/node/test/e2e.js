'use strict';

// End-to-end check of the Node.js client against a live public server.
//
//   node clients/node/test/e2e.js 127.0.0.1:50051
//
// Exit status 0 and a one-line summary on success; non-zero (with the failing assertion or
// gRPC error on stderr) on any failure.

const assert = require('node:assert/strict');
const { VectorSearchClient, status } = require('../index.js');

const COLLECTION = 'node_e2e';
const DIM = 8;
const N = 200;
const SEED = 20240611;
const OVERALL_TIMEOUT_MS = 120_000;

/** mulberry32: a tiny deterministic 32-bit PRNG returning floats in [0, 1). */
function mulberry32(seed) {
  let a = seed >>> 0;
  return function next() {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function makeItems() {
  const rand = mulberry32(SEED);
  const items = [];
  for (let i = 0; i < N; i++) {
    const vector = Array.from({ length: DIM }, () => rand() * 2 - 1);
    items.push({
      id: `n-${i}`,
      vector,
      metadata: {
        uri: `mem://node-e2e/${i}`,
        tags: [i % 2 === 0 ? 'even' : 'odd'],
        attributes: { i },
      },
    });
  }
  return items;
}

function indexOfId(id) {
  const m = /^n-(\d+)$/.exec(id);
  assert.ok(m, `unexpected id ${JSON.stringify(id)}`);
  return Number(m[1]);
}

function assertAscending(hits, what) {
  for (let j = 1; j < hits.length; j++) {
    assert.ok(
      hits[j - 1].distance <= hits[j].distance,
      `${what}: distances not ascending at ${j}: ${hits.map((h) => h.distance).join(', ')}`,
    );
  }
}

async function expectGrpcError(promise, code, what) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.code, code, `${what}: expected gRPC status ${code}, got ${err.code} (${err.details ?? err.message})`);
    return true;
  });
}

async function main(address) {
  const client = new VectorSearchClient(address, { timeoutMs: 20_000 });
  const checks = [];
  try {
    // A leftover from an aborted earlier run must not change the outcome.
    await client.dropCollection(COLLECTION);

    const spec = { name: COLLECTION, dimension: DIM, metric: 'METRIC_L2' };
    const created = await client.createCollection(spec);
    assert.equal(created.created, true, 'first CreateCollection must create');
    assert.equal(created.spec.name, COLLECTION);
    assert.equal(created.spec.dimension, DIM);
    assert.equal(created.spec.metric, 'METRIC_L2');
    const again = await client.createCollection(spec);
    assert.equal(again.created, false, 'identical CreateCollection must be idempotent (created=false)');
    checks.push('create');

    const listed = await client.listCollections();
    assert.ok(
      listed.some((c) => c.name === COLLECTION),
      `ListCollections lacks ${COLLECTION}: ${JSON.stringify(listed)}`,
    );
    checks.push('list');

    const items = makeItems();
    let upserted = 0;
    for (let lo = 0; lo < N; lo += 100) {
      upserted += await client.upsert(COLLECTION, items.slice(lo, lo + 100));
    }
    assert.equal(upserted, N, 'Upsert must count every item');
    checks.push(`upsert ${upserted}`);

    const described = await client.describeCollection(COLLECTION);
    assert.equal(described.spec.dimension, DIM);
    assert.equal(described.count, N, 'DescribeCollection count after upsert');
    checks.push('describe');

    const got = await client.get(COLLECTION, ['n-3', 'n-4', 'n-missing'], { includeVectors: true });
    assert.deepEqual(got.missingIds, ['n-missing']);
    assert.deepEqual(got.items.map((it) => it.id).sort(), ['n-3', 'n-4']);
    for (const it of got.items) {
      const i = indexOfId(it.id);
      assert.deepEqual(it.vector, items[i].vector.map(Math.fround), `Get vector of ${it.id}`);
      assert.equal(it.metadata.uri, items[i].metadata.uri);
      assert.deepEqual(it.metadata.tags, items[i].metadata.tags);
      assert.deepEqual(it.metadata.attributes, { i });
    }
    checks.push('get');

    const queryIdx = [0, 17, 42, 99, 199];
    const results = await client.search(
      COLLECTION,
      queryIdx.map((i) => items[i].vector),
      { k: 5, includeMetadata: true },
    );
    assert.equal(results.partial, false, `unexpected partial result, failed shards ${results.failedShards}`);
    assert.deepEqual(results.failedShards, []);
    assert.equal(results.length, queryIdx.length, 'one result list per query');
    results.forEach((hits, q) => {
      const want = `n-${queryIdx[q]}`;
      assert.equal(hits.length, 5, `query ${q}: k=5 hits`);
      assert.equal(hits[0].id, want, `query ${q}: first hit must be the query's own id`);
      assert.ok(Math.abs(hits[0].distance) < 1e-4, `query ${q}: self distance ${hits[0].distance} not ~0`);
      assertAscending(hits, `query ${q}`);
      assert.equal(new Set(hits.map((h) => h.id)).size, hits.length, `query ${q}: duplicate ids`);
      assert.equal(hits[0].metadata.uri, items[queryIdx[q]].metadata.uri, `query ${q}: metadata`);
    });
    checks.push('search');

    const filtered = await client.search(COLLECTION, [items[1].vector, items[2].vector], {
      k: 10,
      includeMetadata: true,
      filter: { condition: { field: 'tags', eq: { string_value: 'even' } } },
    });
    for (const hits of filtered) {
      assert.ok(hits.length > 0, 'filtered search returned nothing');
      for (const h of hits) {
        assert.equal(indexOfId(h.id) % 2, 0, `filter tags=even returned ${h.id}`);
        assert.deepEqual(h.metadata.tags, ['even']);
      }
      assertAscending(hits, 'filtered search');
    }
    assert.equal(filtered[1][0].id, 'n-2', 'filtered search: even query finds itself first');
    checks.push('filter');

    const similar = await client.searchById(COLLECTION, 'n-7', { k: 5 });
    assert.equal(similar.length, 5, 'SearchById k=5');
    assert.ok(!similar.some((h) => h.id === 'n-7'), 'SearchById must leave the item itself out');
    assertAscending(similar, 'SearchById');
    checks.push('searchById');

    await expectGrpcError(
      client.search(COLLECTION, [[1, 2, 3, 4]], { k: 5 }),
      status.INVALID_ARGUMENT,
      'wrong-dimension search',
    );
    await expectGrpcError(
      client.search('node_e2e_no_such_collection', [items[0].vector], { k: 5 }),
      status.NOT_FOUND,
      'search of an unknown collection',
    );
    checks.push('errors');

    const deleted = await client.delete(COLLECTION, ['n-5', 'n-missing']);
    const afterDelete = await client.get(COLLECTION, ['n-5', 'n-6']);
    assert.deepEqual(afterDelete.missingIds, ['n-5'], 'deleted item must be missing, others kept');
    assert.deepEqual(afterDelete.items.map((it) => it.id), ['n-6']);
    checks.push(`delete (deleted=${deleted})`);

    assert.equal(await client.dropCollection(COLLECTION), true, 'DropCollection of an existing collection');
    const listedAfter = await client.listCollections();
    assert.ok(!listedAfter.some((c) => c.name === COLLECTION), 'dropped collection still listed');
    checks.push('drop');
  } finally {
    client.close();
  }
  return checks;
}

const address = process.argv[2];
if (!address) {
  console.error('usage: node test/e2e.js HOST:PORT');
  process.exit(2);
}

const started = Date.now();
const watchdog = setTimeout(() => {
  console.error(`node e2e: FAILED: no result after ${OVERALL_TIMEOUT_MS} ms`);
  process.exit(1);
}, OVERALL_TIMEOUT_MS);
watchdog.unref();

main(address).then(
  (checks) => {
    console.log(`node e2e: OK against ${address} in ${Date.now() - started} ms (${checks.join(', ')})`);
    process.exitCode = 0;
  },
  (err) => {
    console.error(`node e2e: FAILED against ${address}:`);
    console.error(err && err.stack ? err.stack : err);
    if (err && err.code !== undefined) {
      console.error(`gRPC status ${err.code}: ${err.details}`);
    }
    process.exitCode = 1;
  },
);
