// Copyright (c) the cacheflight authors. Distributed under the Boost Software License 1.0.
#ifndef CACHEFLIGHT_DETAIL_INTRUSIVE_LIST_HPP
#define CACHEFLIGHT_DETAIL_INTRUSIVE_LIST_HPP

#include <cstddef>

namespace cacheflight::detail {

// A doubly linked list of nodes that derive from `list_hook`. It owns nothing.
struct list_hook {
  list_hook* prev = nullptr;
  list_hook* next = nullptr;
};

template <class Node>
class intrusive_list {
 public:
  intrusive_list() = default;
  intrusive_list(const intrusive_list&) = delete;
  intrusive_list& operator=(const intrusive_list&) = delete;
  intrusive_list(intrusive_list&& o) noexcept : head_(o.head_), tail_(o.tail_), size_(o.size_) {
    o.head_ = o.tail_ = nullptr;
    o.size_ = 0;
  }
  // Takes o's nodes; the list must be empty.
  intrusive_list& operator=(intrusive_list&& o) noexcept {
    head_ = o.head_;
    tail_ = o.tail_;
    size_ = o.size_;
    o.head_ = o.tail_ = nullptr;
    o.size_ = 0;
    return *this;
  }

  bool empty() const noexcept { return head_ == nullptr; }
  std::size_t size() const noexcept { return size_; }
  Node* front() const noexcept { return static_cast<Node*>(head_); }
  Node* back() const noexcept { return static_cast<Node*>(tail_); }

  void push_front(Node* n) noexcept {
    list_hook* h = n;
    h->prev = nullptr;
    h->next = head_;
    if (head_) head_->prev = h; else tail_ = h;
    head_ = h;
    ++size_;
  }

  void push_back(Node* n) noexcept {
    list_hook* h = n;
    h->prev = tail_;
    h->next = nullptr;
    if (tail_) tail_->next = h; else head_ = h;
    tail_ = h;
    ++size_;
  }

  void erase(Node* n) noexcept {
    list_hook* h = n;
    if (h->prev) h->prev->next = h->next; else head_ = h->next;
    if (h->next) h->next->prev = h->prev; else tail_ = h->prev;
    h->prev = h->next = nullptr;
    --size_;
  }

  Node* pop_front() noexcept {
    Node* n = front();
    if (n) erase(n);
    return n;
  }

  // Moves o's nodes, in order, to the back of this list.
  void splice_back(intrusive_list&& o) noexcept {
    if (!o.head_) return;
    if (tail_) {
      tail_->next = o.head_;
      o.head_->prev = tail_;
    } else {
      head_ = o.head_;
    }
    tail_ = o.tail_;
    size_ += o.size_;
    o.head_ = o.tail_ = nullptr;
    o.size_ = 0;
  }

 private:
  list_hook* head_ = nullptr;
  list_hook* tail_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace cacheflight::detail

#endif
