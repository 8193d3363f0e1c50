// Stock Yjs clients (npm `yjs` and `y-websocket`) editing one Revo document from two edges,
// with a viewer who must not be able to write and a JSON-protocol reader (run by
// tests/realtime.rs). Prints one JSON line: the final text and every update the clients
// made (the corpus the Rust side replays through yrs).
//
// Usage: node yjs.mjs EDGE_A_URL EDGE_B_URL ADMIN_PASSWORD
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [A, B, ADMIN_PW] = process.argv.slice(2)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const fail = (m) => { console.error(m); process.exit(1) }

async function http (base, method, path, token, body) {
  const headers = {}
  if (token) headers.Authorization = `Bearer ${token}`
  if (body) headers['Content-Type'] = 'application/json'
  const r = await fetch(base + path, { method, headers, body: body ? JSON.stringify(body) : undefined })
  const text = await r.text()
  return [r.status, text ? JSON.parse(text) : null]
}

async function login (base, username, password) {
  const [s, b] = await http(base, 'POST', '/auth/login', null, { username, password })
  if (s !== 200) fail(`login ${username}: ${s} ${JSON.stringify(b)}`)
  return b.access_token
}

async function user (admin, name, roles) {
  const password = `${name}-password-123`
  const [s, b] = await http(A, 'POST', '/users', admin, { username: name, password, roles })
  if (s !== 201) fail(`create ${name}: ${s} ${JSON.stringify(b)}`)
  return { id: b.id, token: await login(A, name, password) }
}

async function until (what, cond, secs = 20) {
  const end = Date.now() + secs * 1000
  while (!cond()) {
    if (Date.now() > end) fail(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

function provider (base, who, room, doc) {
  const server = base.replace('http://', 'ws://') + `/ws/${who.id}/yjs`
  return new WebsocketProvider(server, `${room}/notes`, doc, {
    WebSocketPolyfill: WebSocket,
    params: { access_token: who.token },
    disableBc: true
  })
}

const admin = await login(A, 'admin', ADMIN_PW)
const alice = await user(admin, 'yalice', ['developer'])
const bob = await user(admin, 'ybob', ['developer'])
const viola = await user(admin, 'yviola', ['developer'])
const [s, room] = await http(A, 'POST', '/rooms', alice.token, {
  name: 'doc',
  members: [{ user_id: bob.id, role: 'member' }, { user_id: viola.id, role: 'viewer' }]
})
if (s !== 201) fail(`room: ${s}`)

const corpus = []
const record = (update, origin, doc) => {
  // Only the clients' own edits (not what they received from the server).
  if (origin === null || origin === undefined || origin === doc.clientID) {
    corpus.push(Buffer.from(update).toString('base64'))
  }
}
const docA = new Y.Doc()
const docB = new Y.Doc()
docA.on('update', (u, origin) => record(u, origin, docA))
docB.on('update', (u, origin) => record(u, origin, docB))
const pa = provider(A, alice, room.id, docA)
const pb = provider(B, bob, room.id, docB)
await until('both synced', () => pa.synced && pb.synced)

const ta = docA.getText('t')
const tb = docB.getText('t')
ta.insert(0, 'Hello 👋 wörld')
await until('bob sees alice', () => tb.toString() === 'Hello 👋 wörld')
// Concurrent edits on both edges, after and between astral characters (UTF-16 offsets:
// just past the emoji), splitting existing items, enough of them for the server to
// take snapshots. (No edit splits a surrogate pair: editors never do, and Yjs and yrs repair
// such a split differently.)
for (let i = 0; i < 150; i++) {
  ta.insert(ta.toString().indexOf('👋') + 2, i % 2 ? 'a' : '𝔸')
  if (i % 20 === 0) ta.insert(3, 'é')
  tb.insert(tb.length, String(i % 10))
  if (i % 10 === 0) tb.delete(tb.length - 1, 1)
  if (i % 25 === 0) await sleep(30)
}
await until('convergence', () => ta.toString() === tb.toString() && ta.length > 150)

// A viewer's edits stay local: the server refuses them.
const docV = new Y.Doc()
const pv = provider(A, viola, room.id, docV)
await until('viewer synced', () => pv.synced)
if (docV.getText('t').toString() !== ta.toString()) fail('the viewer did not get the document')
docV.getText('t').insert(0, 'VIEWER WAS HERE ')
await sleep(1500)
if (ta.toString().includes('VIEWER') || tb.toString().includes('VIEWER')) fail('a viewer wrote')

// A late joiner on edge B (its actor reloads from the snapshot and the updates after it).
const docC = new Y.Doc()
const pc = provider(B, bob, room.id, docC)
await until('late joiner synced', () => pc.synced && docC.getText('t').toString() === ta.toString())

// The JSON protocol sees the same document.
const json = await new Promise((resolve, reject) => {
  const ws = new WebSocket(A.replace('http://', 'ws://') + `/ws/${alice.id}`,
    { headers: { Authorization: `Bearer ${alice.token}` } })
  ws.on('message', (raw) => {
    const f = JSON.parse(raw)
    if (f.type === 'welcome') ws.send(JSON.stringify({ type: 'room.join', room: room.id }))
    if (f.type === 'room.joined') ws.send(JSON.stringify({ type: 'doc.open', room: room.id, doc: 'notes' }))
    if (f.type === 'doc.sync') { ws.close(); resolve(f) }
    if (f.type === 'error') reject(new Error(JSON.stringify(f)))
  })
})
const docJ = new Y.Doc()
Y.applyUpdate(docJ, Buffer.from(json.update, 'base64'))
if (docJ.getText('t').toString() !== ta.toString()) fail('doc.sync differs from the live document')

// The corpus replayed by JavaScript Yjs alone gives the same text.
const replay = new Y.Doc()
for (const u of corpus) Y.applyUpdate(replay, Buffer.from(u, 'base64'))
if (replay.getText('t').toString() !== ta.toString()) fail('the corpus does not replay to the live text')

for (const p of [pa, pb, pv, pc]) p.destroy()
console.log(JSON.stringify({ room: room.id, alice: alice.token, text: ta.toString(), corpus }))
process.exit(0)
