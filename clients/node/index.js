'use strict';

// Node.js client for vectorsearch.v1.SearchService.
//
// The gRPC service definition is built at runtime from the repository's proto/ files with
// @grpc/proto-loader, so there are no generated stubs to keep in sync: the .proto files are the
// single source of truth. Vectors are sent packed (little-endian float32 bytes in
// Vectors.packed), the fast path of the API.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const REPO_ROOT = path.resolve(__dirname, '../..');
const PROTO_DIR = path.join(REPO_ROOT, 'proto');
const SERVICE_PROTO = 'vectorsearch/v1/search_service.proto';

const LOADER_OPTIONS = Object.freeze({
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
});

const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

let cachedPackage = null;

/** The loaded `vectorsearch.v1` package (service constructors and message types). */
function loadPackage() {
  if (cachedPackage === null) {
    const definition = protoLoader.loadSync(SERVICE_PROTO, LOADER_OPTIONS);
    cachedPackage = grpc.loadPackageDefinition(definition).vectorsearch.v1;
  }
  return cachedPackage;
}

/**
 * Packs rows of numbers into a Vectors message: `dimension` plus little-endian float32 bytes.
 * Every row must have the same length; the server checks it against the collection.
 */
function packVectors(rows) {
  if (!Array.isArray(rows)) {
    throw new TypeError('vectors must be an array of number arrays');
  }
  const dimension = rows.length > 0 ? rowLength(rows[0], 0) : 0;
  const buf = Buffer.alloc(rows.length * dimension * 4);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let offset = 0;
  rows.forEach((row, r) => {
    if (rowLength(row, r) !== dimension) {
      throw new TypeError(`vector ${r} has ${row.length} values, vector 0 has ${dimension}`);
    }
    for (let j = 0; j < dimension; j++) {
      view.setFloat32(offset, Number(row[j]), true);
      offset += 4;
    }
  });
  return { dimension, packed: buf };
}

function rowLength(row, r) {
  if (!Array.isArray(row) && !ArrayBuffer.isView(row)) {
    throw new TypeError(`vector ${r} must be an array of numbers`);
  }
  return row.length;
}

// ---- metadata conversion -------------------------------------------------------------------

const VALUE_KEYS = ['string_value', 'int_value', 'double_value', 'bool_value'];

/**
 * Converts a plain JS attribute value to an AttributeValue: string, boolean, bigint (int),
 * integral number (int), other number (double). An object already in AttributeValue form
 * (e.g. `{double_value: 2}`) passes through, which is how to force a double for 2.0.
 */
function toAttributeValue(name, value) {
  if (value !== null && typeof value === 'object') {
    if (VALUE_KEYS.some((k) => k in value)) {
      return value;
    }
  }
  switch (typeof value) {
    case 'string':
      return { string_value: value };
    case 'boolean':
      return { bool_value: value };
    case 'bigint':
      return { int_value: value.toString() };
    case 'number':
      return Number.isInteger(value) ? { int_value: value } : { double_value: value };
    default:
      throw new TypeError(`attribute ${JSON.stringify(name)} has an unsupported value: ${String(value)}`);
  }
}

/** AttributeValue -> plain JS value (int64 -> number when safe, else BigInt). */
function fromAttributeValue(av) {
  switch (av.value) {
    case 'string_value':
      return av.string_value;
    case 'bool_value':
      return av.bool_value;
    case 'double_value':
      return av.double_value;
    case 'int_value': {
      const n = Number(av.int_value);
      return Number.isSafeInteger(n) ? n : BigInt(av.int_value);
    }
    default:
      return null;
  }
}

function toMetadata(md) {
  if (md === undefined || md === null) {
    return null;
  }
  const attributes = {};
  for (const [name, value] of Object.entries(md.attributes ?? {})) {
    attributes[name] = toAttributeValue(name, value);
  }
  return { uri: md.uri ?? '', tags: md.tags ?? [], attributes };
}

function fromMetadata(md) {
  if (md === undefined || md === null) {
    return null;
  }
  const attributes = {};
  for (const [name, av] of Object.entries(md.attributes ?? {})) {
    attributes[name] = fromAttributeValue(av);
  }
  return { uri: md.uri, tags: md.tags, attributes };
}

// ---- spec conversion -----------------------------------------------------------------------

function toMetric(metric) {
  if (metric === undefined || metric === null) {
    return 'METRIC_UNSPECIFIED';
  }
  const name = String(metric).toUpperCase();
  return name.startsWith('METRIC_') ? name : `METRIC_${name}`;
}

function toSpec(spec) {
  if (spec === null || typeof spec !== 'object') {
    throw new TypeError('spec must be an object {name, dimension, metric, hnsw?}');
  }
  const hnsw = spec.hnsw ?? {};
  return {
    name: spec.name,
    dimension: spec.dimension,
    metric: toMetric(spec.metric),
    hnsw: {
      m: hnsw.m ?? 0,
      ef_construction: hnsw.ef_construction ?? hnsw.efConstruction ?? 0,
      ef_search: hnsw.ef_search ?? hnsw.efSearch ?? 0,
    },
  };
}

function fromSpec(spec) {
  if (spec === null || spec === undefined) {
    return null;
  }
  return {
    name: spec.name,
    dimension: spec.dimension,
    metric: spec.metric,
    hnsw: spec.hnsw
      ? { m: spec.hnsw.m, ef_construction: spec.hnsw.ef_construction, ef_search: spec.hnsw.ef_search }
      : { m: 0, ef_construction: 0, ef_search: 0 },
  };
}

function fromHit(hit) {
  const out = { id: hit.id, distance: hit.distance, metadata: fromMetadata(hit.metadata) };
  if (hit.vector && hit.vector.length > 0) {
    out.vector = hit.vector;
  }
  return out;
}

/** An array of result lists with `partial` and `failedShards` attached as properties. */
function withShardInfo(results, response) {
  results.partial = Boolean(response.partial);
  results.failedShards = response.failed_shards ?? [];
  return results;
}

// ---- client --------------------------------------------------------------------------------

class VectorSearchClient {
  /**
   * @param {string} address host:port of the public server.
   * @param {object} [options]
   * @param {grpc.ChannelCredentials} [options.credentials] defaults to insecure.
   * @param {number} [options.timeoutMs] deadline of each call (default 30 s); per-call
   *   `timeoutMs` in a method's options overrides it.
   * @param {object} [options.channelOptions] extra grpc-js channel options.
   */
  constructor(address, options = {}) {
    const pkg = loadPackage();
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const channelOptions = {
      'grpc.max_receive_message_length': DEFAULT_MAX_MESSAGE_BYTES,
      'grpc.max_send_message_length': DEFAULT_MAX_MESSAGE_BYTES,
      ...(options.channelOptions ?? {}),
    };
    this.stub = new pkg.SearchService(
      address,
      options.credentials ?? grpc.credentials.createInsecure(),
      channelOptions,
    );
  }

  _call(method, request, callOptions = {}) {
    const timeoutMs = callOptions.timeoutMs ?? this.timeoutMs;
    return new Promise((resolve, reject) => {
      this.stub[method](request, { deadline: Date.now() + timeoutMs }, (err, response) => {
        if (err) {
          reject(err);
        } else {
          resolve(response);
        }
      });
    });
  }

  /** spec: {name, dimension, metric: 'METRIC_L2' | 'L2' | ..., hnsw?} -> {created, spec} */
  async createCollection(spec, callOptions) {
    const res = await this._call('CreateCollection', { spec: toSpec(spec) }, callOptions);
    return { created: res.created, spec: fromSpec(res.spec) };
  }

  /** -> true if it existed */
  async dropCollection(name, callOptions) {
    const res = await this._call('DropCollection', { collection: name }, callOptions);
    return res.dropped;
  }

  /** -> [spec] sorted by name */
  async listCollections(callOptions) {
    const res = await this._call('ListCollections', {}, callOptions);
    return res.collections.map(fromSpec);
  }

  /** -> {spec, count} */
  async describeCollection(name, callOptions) {
    const res = await this._call('DescribeCollection', { collection: name }, callOptions);
    return { spec: fromSpec(res.spec), count: Number(res.count) };
  }

  /** items: [{id, vector: number[], metadata?: {uri?, tags?, attributes?}}] -> upserted count */
  async upsert(collection, items, callOptions) {
    if (!Array.isArray(items)) {
      throw new TypeError('items must be an array of {id, vector, metadata?}');
    }
    const request = {
      collection,
      items: items.map((item) => ({ id: item.id, metadata: toMetadata(item.metadata) })),
      vectors: packVectors(items.map((item) => item.vector)),
    };
    const res = await this._call('Upsert', request, callOptions);
    return res.upserted;
  }

  /** -> {items: [{id, metadata, vector?}], missingIds} */
  async get(collection, ids, options = {}) {
    const request = { collection, ids, include_vectors: Boolean(options.includeVectors) };
    const res = await this._call('Get', request, options);
    return {
      items: res.items.map((item) => {
        const out = { id: item.id, metadata: fromMetadata(item.metadata) };
        if (options.includeVectors) {
          out.vector = item.vector;
        }
        return out;
      }),
      missingIds: res.missing_ids,
    };
  }

  /** -> number of ids deleted */
  async delete(collection, ids, callOptions) {
    const res = await this._call('Delete', { collection, ids }, callOptions);
    return res.deleted;
  }

  /**
   * queries: number[][]; options {k, ef, filter, includeMetadata, includeVectors,
   * requireAllShards, timeoutMs}. `filter` is a Filter message as a plain object, e.g.
   * {condition: {field: 'tags', eq: {string_value: 'even'}}}.
   * -> [[{id, distance, metadata}]] (one list per query) with .partial and .failedShards.
   */
  async search(collection, queries, options = {}) {
    const request = {
      collection,
      queries: packVectors(queries),
      ...searchOptions(options),
    };
    const res = await this._call('Search', request, options);
    return withShardInfo(
      res.results.map((qh) => qh.hits.map(fromHit)),
      res,
    );
  }

  /**
   * "More like this" for a stored item (the item itself is left out).
   * -> [{id, distance, metadata}] (a single list) with .partial and .failedShards.
   */
  async searchById(collection, id, options = {}) {
    const request = { collection, id, ...searchOptions(options) };
    const res = await this._call('SearchById', request, options);
    const hits = res.results.length > 0 ? res.results[0].hits.map(fromHit) : [];
    return withShardInfo(hits, res);
  }

  close() {
    this.stub.close();
  }
}

function searchOptions(options) {
  const out = {
    k: options.k ?? 10,
    ef: options.ef ?? 0,
    include_metadata: Boolean(options.includeMetadata),
    include_vectors: Boolean(options.includeVectors),
    require_all_shards: Boolean(options.requireAllShards),
  };
  if (options.filter !== undefined && options.filter !== null) {
    out.filter = options.filter;
  }
  return out;
}

module.exports = {
  VectorSearchClient,
  packVectors,
  loadPackage,
  status: grpc.status,
  PROTO_DIR,
};
